"""The beat heartbeat: proof, in the metrics, that beat schedules and a worker runs.

Beat only publishes; nothing would show that it stopped until deferred payments, the
outbox sweep and the idempotency completer quietly stop running. This task is on beat's
schedule (``BEAT_HEARTBEAT_INTERVAL_S``) and runs on worker-default, where it sets
``celery_beat_heartbeat_timestamp_seconds``; the ``BeatNotRunning`` alert fires when that
timestamp gets old (runbooks/BeatNotRunning.md).
"""

from __future__ import annotations

import time

from celery import shared_task
from prometheus_client import Gauge

# "max" (not "livemax"): the newest heartbeat survives the pool process that ran it.
BEAT_HEARTBEAT = Gauge(
    "celery_beat_heartbeat_timestamp_seconds",
    "Unix time of the last beat heartbeat task run (0 until the first since start).",
    multiprocess_mode="max",
)


@shared_task(name="common.tasks.beat_heartbeat", ignore_result=True)
def beat_heartbeat() -> float:
    """Record that a beat-scheduled task just ran."""
    now = time.time()
    BEAT_HEARTBEAT.set(now)
    return now
