"""Settings of the web processes that ``python -m bench peers`` starts (never the product's).

The test settings plus the peers' apps, middleware and stores, and the benchmark's own
URL map (``bench/peers/urls.py``). Every peer gets its documented, "textbook"
configuration; only what must point at the benchmark's Redis and database is changed.

The rate limiters' stores point at ``PEERS_LIMIT_REDIS_URL`` (a throw-away redis-server
the benchmark kills to see what each limiter does without its store); everything else
uses ``REDIS_URL``. drf-idempotency holds one backend per process, chosen with
``PEERS_DRF_IDEMPOTENCY_BACKEND`` (``database`` or ``redis``), set only for the servers
that run it.
"""

import os

from config.settings.test import *  # noqa: F403 - a settings layer extends the test one
from config.settings.test import (
    INSTALLED_APPS,
    MIDDLEWARE,
    REDIS_URL,
    RESILIENCE_RATELIMIT,
)

ROOT_URLCONF = "bench.peers.urls"
PEERS_LIMIT_REDIS_URL = os.environ.get("PEERS_LIMIT_REDIS_URL", REDIS_URL)
PEERS_KEY_PREFIX = os.environ.get("PEERS_KEY_PREFIX", "peers")

INSTALLED_APPS = [*INSTALLED_APPS, "drf_idempotency"]
# django-idempotency-key: opt-in per view (@idempotency_key) through its exempt-by-default
# middleware, which must run before the view (process_view).
MIDDLEWARE = [*MIDDLEWARE, "idempotency_key.middleware.ExemptIdempotencyKeyMiddleware"]

# --- Idempotency peers -----------------------------------------------------------------
_DRF_BACKENDS = {
    "database": ("drf_idempotency.backends.database.DatabaseBackend", {}),
    "redis": (
        "drf_idempotency.backends.redis.RedisBackend",
        {"url": REDIS_URL, "key_prefix": f"{PEERS_KEY_PREFIX}:drf-idem:"},
    ),
}
_backend, _options = _DRF_BACKENDS[os.environ.get("PEERS_DRF_IDEMPOTENCY_BACKEND") or "database"]
IDEMPOTENCY = {"BACKEND": _backend, "BACKEND_OPTIONS": _options}
# drf-idempotency's per-view decorator answers 500 on an APIView method in 1.0.0 (it
# renders the Response before DRF has chosen a renderer), so it runs as its documented
# middleware, in servers of its own: the middleware takes every keyed POST it sees.
# (django-idempotency-key's middleware is left out there: it raises on any response it
# did not see the view of, such as drf-idempotency's replays.)
if os.environ.get("PEERS_DRF_IDEMPOTENCY_BACKEND"):
    MIDDLEWARE = [*MIDDLEWARE[:-1], "drf_idempotency.middleware.IdempotencyMiddleware"]
CACHES = {
    **CACHES,  # noqa: F405
    # The peers' stores: Django's own Redis cache, as their documentation sets it up.
    "peers_idempotency": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"{PEERS_KEY_PREFIX}-idem-key",
    },
    "peers_ratelimit": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": PEERS_LIMIT_REDIS_URL,
        "KEY_PREFIX": f"{PEERS_KEY_PREFIX}-djrl",
    },
}
# Shared across processes: the cache storage and the Redis lock its README recommends
# for more than one process.
IDEMPOTENCY_KEY = {
    "STORAGE": {
        "CLASS": "idempotency_key.storage.CacheKeyStorage",
        "CACHE_NAME": "peers_idempotency",
    },
    "LOCK": {
        "CLASS": "idempotency_key.locks.redis.MultiProcessRedisLock",
        "LOCATION": REDIS_URL,
        "NAME": f"{PEERS_KEY_PREFIX}-idem-key-lock",
    },
}

# --- Rate-limit peers ------------------------------------------------------------------
# The compared policy: 100 requests per second. Our bucket: burst 100, 100/s.
PEERS_RATE = 100
RATELIMIT_USE_CACHE = "peers_ratelimit"  # django-ratelimit (fail closed: its default)
RATELIMIT_FAIL_OPEN = False
RESILIENCE_RATELIMIT = {
    **RESILIENCE_RATELIMIT,
    "redis": {**RESILIENCE_RATELIMIT["redis"], "url": PEERS_LIMIT_REDIS_URL},
    "key_prefix": f"{PEERS_KEY_PREFIX}-rl",
    # Two gunicorn processes share each limit (the fallback's share while Redis is down).
    "instances": 2,
    "middleware": {"policy": None, "path_prefixes": []},
    "policies": {
        **RESILIENCE_RATELIMIT["policies"],
        "peers_policy": {"capacity": PEERS_RATE, "refill_rate": float(PEERS_RATE), "scope": "ip"},
        "peers_policy_closed": {
            "capacity": PEERS_RATE,
            "refill_rate": float(PEERS_RATE),
            "scope": "ip",
            "fail": "closed",
        },
        "peers_never": {"capacity": 10**9, "refill_rate": 10**6, "scope": "ip"},
    },
}
