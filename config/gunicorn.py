"""gunicorn settings for the web process (gthread workers).

Every number comes from the environment with a documented default (docs/configuration.md).
"""

import gc
import os

from prometheus_client import multiprocess

from config.env import env
from config.worker_model import WEB_THREADS, WEB_WORKERS

bind = f"{os.environ.get('WEB_HOST', '127.0.0.1')}:{os.environ.get('WEB_PORT', '8000')}"
workers = WEB_WORKERS
# gthread, measuring each request's wait for a thread (queue-time shedding, adr/0010).
worker_class = "resilience.gunicorn_worker.QueueTimedThreadWorker"
threads = WEB_THREADS
# A request that outlives this is killed; the request deadline (settings) is shorter.
timeout = int(os.environ.get("WEB_TIMEOUT_S", "30"))
graceful_timeout = int(os.environ.get("WEB_GRACEFUL_TIMEOUT_S", "20"))
keepalive = 5
# Bounded accept queue: under overload new connections are refused at the socket instead
# of waiting behind thousands of others.
backlog = int(os.environ.get("WEB_BACKLOG", "256"))
accesslog = "-"
access_log_format = (
    '{"event":"access","method":"%(m)s","path":"%(U)s","status":%(s)s,"ms":%(M)s,'
    '"request_id":"%({x-request-id}o)s"}'
)


def on_starting(server):
    """Refuse to start when the system checks fail (e.g. a bulkhead that cannot fill)."""
    import django
    from django.db import connections

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    django.setup()
    from resilience.checks import refuse_to_start_on_errors

    refuse_to_start_on_errors()
    connections.close_all()  # nothing of the master's is inherited by the workers


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the multiprocess metrics directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Create every resilience series at zero, so alerts and dashboards see them at once;
    then freeze what start-up allocated out of the garbage collector's reach."""
    from common.metrics_bootstrap import preinitialise

    preinitialise()
    if env("WEB_GC_FREEZE", default=True, cast=bool):
        # Django, DRF and the URL and schema caches are about 120,000 objects that live
        # as long as the process; every full collection walked them all, and the full
        # collections that an outage's exceptions trigger (each refusal leaves a cycle)
        # stopped every thread of the process for 95 to 265 ms every few seconds
        # (postgres-down, adr/0007). Frozen, a full collection walks only what requests
        # made since.
        gc.freeze()
