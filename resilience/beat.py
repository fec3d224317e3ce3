"""One active beat for the fleet: a Celery beat scheduler that schedules only under a lock.

``celery beat --scheduler resilience.beat:LockedScheduler``. Every beat process tries to
take one Redis key (``SET NX PX``, in the shared-state Redis that holds breaker state);
the holder renews it on every tick and schedules, the others schedule nothing and try
again every third of the lease. A beat started by mistake, or a standby, therefore does
nothing while the first one lives, and takes over within one lease after it dies.

While Redis cannot answer, the holder keeps scheduling until its lease would have
expired (no one else can take it meanwhile), then stops: two beats never schedule at
once, and missed beats show as ``BeatNotRunning``. Every periodic task is idempotent
anyway (sweeps and purges claim their rows in Postgres).
"""

from __future__ import annotations

import logging
import time
import uuid

import redis
from celery.beat import PersistentScheduler
from django.conf import settings

from resilience.breaker_state import _shared_state_redis

logger = logging.getLogger(__name__)

# KEYS[1] the lock; ARGV token, lease in ms. Renew if ours, take if free; 1 when held.
_TAKE_OR_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
"""


class BeatLock:
    """The fleet-wide lease behind :class:`LockedScheduler`."""

    def __init__(self, key: str, lease_s: float) -> None:
        self.key = key
        self.lease_s = lease_s
        self.token = f"{uuid.uuid4().hex}"
        self.held_until = 0.0  # monotonic
        self._script = None

    def acquire(self) -> bool:
        """Take or renew the lease; True while this process holds it."""
        now = time.monotonic()
        try:
            client = _shared_state_redis()
            if self._script is None:
                self._script = client.register_script(_TAKE_OR_RENEW)
            held = bool(self._script(keys=[self.key], args=[self.token, int(self.lease_s * 1000)]))
        except redis.RedisError as exc:
            # Nobody can take it from us while Redis is out: keep what is left of the lease.
            still = now < self.held_until
            logger.warning(
                "beat lock unavailable",
                extra={"error": type(exc).__name__, "holding": still},
            )
            return still
        self.held_until = now + self.lease_s if held else 0.0
        return held

    def release(self) -> None:
        try:
            client = _shared_state_redis()
            client.eval(
                "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
                "end return 0",
                1,
                self.key,
                self.token,
            )
        except redis.RedisError:
            pass  # the lease expires on its own


class LockedScheduler(PersistentScheduler):
    """``PersistentScheduler`` that only schedules while it holds the fleet's beat lock."""

    def __init__(self, *args, **kwargs) -> None:
        self.lock = BeatLock(settings.BEAT_LOCK_KEY, settings.BEAT_LOCK_LEASE_S)
        self._active: bool | None = None  # logged on the first tick and every change
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs) -> float:
        held = self.lock.acquire()
        if held != self._active:
            self._active = held
            logger.warning(
                "beat lock %s", "taken: scheduling" if held else "held elsewhere: standing by"
            )
        if not held:
            return self.lock.lease_s / 3
        # Never sleep past a third of the lease, so renewals keep it.
        return min(super().tick(*args, **kwargs), self.lock.lease_s / 3)

    def close(self) -> None:
        if self._active:
            self.lock.release()
        super().close()
