"""Recovery probes: while a breaker is open, a background probe decides when to close it.

A user request is then never the half-open trial, so none pays a trial's timeout
(Envoy's active health checking; adr/0008). Each dependency declares its probe in
settings (``RESILIENCE["dependencies"][name]["breaker"]["probe"]``), never at a call
site: a kind below, or the dotted path of a callable that takes the dependency's
policy and raises (or returns False) when the dependency is not healthy.

* ``http``: ``GET <base_url>/healthz`` with the policy's connect and read timeouts; any
  answer but 2xx, or one slower than the breaker's slow-call threshold, fails.
* ``postgres``: ``SELECT 1`` on a fresh connection (the policy's connect and statement
  timeouts), never one of the pool's.
* ``redis``: ``PING`` on a fresh client with the ``redis`` policy's timeouts.

The runner is one daemon thread per process, started lazily by any breaker that opens
or is seen open (web threads and Celery children alike; a forked child starts its own:
the pid is checked). Every ``tick_s`` (jittered) it marks each open breaker "probed"
(the heartbeat that keeps user calls from becoming trials); once an open period is
over, it takes the breaker's probe lock (for shared state, ``SET NX PX`` in Redis: one
prober for the fleet) and probes. Success closes the breaker for every process; failure
starts another open period. The thread ends after ``idle_ticks`` with nothing open.
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings

from resilience import metrics, socket_deadline
from resilience.policies import DependencyPolicy, get_policy

logger = logging.getLogger(__name__)

DEFAULTS = {"enabled": True, "tick_s": 0.5, "stale_after_s": 5.0, "lock_ttl_s": 5.0}
IDLE_TICKS = 20


class ProbeFailedError(Exception):
    """The dependency answered the probe, but not as a healthy one."""


def probe_settings() -> dict[str, Any]:
    return {**DEFAULTS, **settings.RESILIENCE.get("probes", {})}


# --- The probes --------------------------------------------------------------------------


def probe_http(policy: DependencyPolicy) -> None:
    from resilience.http import probe_status

    started = time.perf_counter()
    status = probe_status(policy.name)
    elapsed = time.perf_counter() - started
    if not 200 <= status < 300:
        raise ProbeFailedError(f"{policy.name} /healthz answered {status}")
    slow_s = policy.breaker.slow_call_s if policy.breaker else None
    if slow_s is not None and elapsed >= slow_s:
        raise ProbeFailedError(f"{policy.name} /healthz took {elapsed * 1000:.0f} ms")


def probe_postgres(policy: DependencyPolicy) -> None:
    import psycopg

    db = settings.DATABASES["default"]
    statement_ms = int((policy.timeouts.statement_s or 1.0) * 1000)
    with psycopg.connect(
        host=db.get("HOST") or None,
        port=db.get("PORT") or None,
        dbname=db.get("NAME"),
        user=db.get("USER") or None,
        password=db.get("PASSWORD") or None,
        connect_timeout=max(2, int(policy.timeouts.connect_s)),  # libpq's minimum is 2
        # Behind PgBouncer the startup packet carries no options: its pool's own apply.
        **(
            {}
            if getattr(settings, "DB_POOLER", "none") == "pgbouncer"
            else {"options": f"-c statement_timeout={statement_ms}"}
        ),
        application_name="resilient-probe",
        autocommit=True,
    ) as connection:
        # A network that swallows the answer must not hold the probe thread for good.
        read_s = policy.timeouts.read_s
        with socket_deadline.watch(connection.pgconn.socket, read_s, "postgres"):
            connection.execute("SELECT 1")


def probe_redis(policy: DependencyPolicy) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from resilience.redis_client import client_from_url

    client = client_from_url(
        policy.base_url or settings.REDIS_URL,
        socket_connect_timeout=policy.timeouts.connect_s,
        socket_timeout=policy.timeouts.read_s,
        retry=Retry(NoBackoff(), retries=0),
    )
    try:
        client.ping()
    finally:
        client.close()


KINDS: dict[str, Callable[[DependencyPolicy], Any]] = {
    "http": probe_http,
    "postgres": probe_postgres,
    "redis": probe_redis,
}


def probe_for(declared: str) -> Callable[[DependencyPolicy], Any]:
    """The probe callable of a declared kind or dotted path."""
    if declared in KINDS:
        return KINDS[declared]
    module, _, name = declared.rpartition(".")
    return getattr(importlib.import_module(module), name)


def run_probe(dependency: str) -> bool:
    """Probe ``dependency`` once; count, time and log the outcome."""
    policy = get_policy(dependency)
    assert policy.breaker is not None
    assert policy.breaker.probe is not None
    started = time.perf_counter()
    error = None
    try:
        ok = probe_for(policy.breaker.probe)(policy) is not False
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means "not healthy"
        ok, error = False, type(exc).__name__
    elapsed = time.perf_counter() - started
    outcome = "ok" if ok else "failed"
    metrics.BREAKER_PROBES.labels(dependency, outcome).inc()
    metrics.BREAKER_PROBE_SECONDS.labels(dependency).observe(elapsed)
    logger.info(
        "breaker probe",
        extra={
            "dependency": dependency,
            "outcome": outcome,
            "error": error,
            "ms": round(elapsed * 1000, 1),
        },
    )
    return ok


# --- The runner ----------------------------------------------------------------------------


def probe_once(now: float | None = None) -> int:
    """One pass over this process's open breakers; returns how many are open."""
    from resilience.breakers import OPEN, built_breakers

    config = probe_settings()
    open_count = 0
    for name, guard in built_breakers().items():
        if guard.policy.probe is None or guard.current_state != OPEN or guard.forced:
            continue
        open_count += 1
        guard.storage.mark_probe_alive(time.time() if now is None else now)
        if guard.open_remaining_s() > 0:
            continue
        token = guard.storage.acquire_probe_lock(config["lock_ttl_s"])
        if token is None:
            continue  # another process of the fleet probes this one
        try:
            if guard.current_state != OPEN:
                continue  # closed (or forced) while we took the lock
            if run_probe(name):
                logger.info("breaker closed by probe", extra={"dependency": name})
                guard.close()
            else:
                guard.restart_open_period()
        finally:
            guard.storage.release_probe_lock(token)
    return open_count


class _Runner:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.poked = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="breaker-probes", daemon=True)

    def _loop(self) -> None:
        idle = 0
        while not self.stop.is_set():
            try:
                open_count = probe_once()
            except Exception:  # a probe pass must never kill the runner
                logger.warning("breaker probe pass failed", exc_info=True)
                open_count = 1
            idle = 0 if open_count else idle + 1
            if idle >= IDLE_TICKS and _retire(self):
                return
            tick = probe_settings()["tick_s"]
            self.stop.wait(random.uniform(0.5, 1.5) * tick)  # noqa: S311 - jitter, not crypto


_runner: _Runner | None = None
_runner_lock = threading.Lock()


def _retire(runner: _Runner) -> bool:
    """End an idle runner, unless a breaker asked for it since its last pass."""
    global _runner  # noqa: PLW0603 - the process's one runner
    with _runner_lock:
        if runner.poked:
            runner.poked = False
            return False
        if _runner is runner:
            _runner = None
        return True


def ensure_runner() -> None:
    """Start this process's probe runner unless it is running (cheap when it is)."""
    global _runner  # noqa: PLW0603 - the process's one runner
    if not probe_settings()["enabled"]:
        return
    with _runner_lock:
        runner = _runner
        if runner is not None and runner.pid == os.getpid() and runner.thread.is_alive():
            runner.poked = True
            return
        _runner = _Runner()
        _runner.thread.start()
    logger.info("breaker probe runner started", extra={"pid": os.getpid()})


def stop_runner(timeout_s: float = 5.0) -> None:
    """Stop this process's runner (tests; a process exiting needs nothing: daemon)."""
    global _runner
    with _runner_lock:
        runner, _runner = _runner, None
    if runner is not None and runner.pid == os.getpid():
        runner.stop.set()
        runner.thread.join(timeout_s)


def runner_alive() -> bool:
    runner = _runner
    return runner is not None and runner.pid == os.getpid() and runner.thread.is_alive()
