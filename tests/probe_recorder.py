"""A probe for tests, declared by dotted path: records when it ran, takes 1 s, fails.

Used by tests/test_breaker_probes.py to show that, with shared state, two processes
never probe the same dependency at the same time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

PROBE_SECONDS = 1.0


def slow_failing_probe(policy) -> bool:
    started = time.time()
    time.sleep(PROBE_SECONDS)
    record = {"pid": os.getpid(), "start": started, "end": time.time()}
    with Path(os.environ["PROBE_LOG"]).open("a") as log:
        log.write(json.dumps(record) + "\n")
    return False
