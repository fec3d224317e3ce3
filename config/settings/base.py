"""Settings shared by every environment.

Every number that shapes behaviour under load or failure (timeouts, pool sizes, limits,
retry counts) is defined here, read from the environment with a documented default, and
listed in the configuration table of ``docs/configuration.md``. Resilience numbers per dependency
live in ``RESILIENCE`` (see ``docs/timeouts.md``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.env import env

BASE_DIR = Path(__file__).resolve().parent.parent.parent

# --- Core -------------------------------------------------------------------------------
SECRET_KEY = env("DJANGO_SECRET_KEY", default="insecure-local-only-key-do-not-use-in-production")
DEBUG = env("DJANGO_DEBUG", default=False, cast=bool)
ALLOWED_HOSTS = env("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"], cast=list)
ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

INSTALLED_APPS = [
    "config.apps.RateLimitedAdminConfig",  # django.contrib.admin, login rate-limited
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "common",
    "resilience",
    "accounts",
    "orders",
    "webhooks",
]

# Order matters: the request id comes first so every later log line carries it; the
# body-size guard runs before anything reads the body.
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "common.middleware.RequestIdMiddleware",
    "common.middleware.BodySizeLimitMiddleware",
    "resilience.deadline.DeadlineMiddleware",
    # Server-Timing: the request's time per dependency (every breaker-guarded call).
    "resilience.timing.ServerTimingMiddleware",
    # Global per-IP flood limit before authentication; also writes the RateLimit fields
    # for the DRF throttles' policies (adr/0004).
    "resilience.ratelimit.middleware.RateLimitMiddleware",
    # Adaptive concurrency limit with priority classes, after the flood limit and before
    # any view work: sheds what exceeds the limit with a cheap 503 (adr/0010).
    "resilience.concurrency.ConcurrencyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves admin and API-docs assets from gunicorn itself (no separate web server).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Worker model: concurrency of each kind of process (config/worker_model.py, adr/0007) --
# The bulkhead sizing check (resilience.checks) compares every semaphore bulkhead with
# the concurrency of the process that holds it.
from config.worker_model import (  # noqa: E402, F401 - read by the bulkhead check and the rig
    WEB_THREADS,
    WEB_WORKERS,
    WORKER_DEFAULT_CONCURRENCY,
    WORKER_WEBHOOKS_CONCURRENCY,
)

# --- PostgreSQL: two aliases on one database, each its own pool (a bulkhead) -------------
# `default` serves the request path, `background` serves Celery workers, so a flood of
# background work can exhaust only its own connections. See adr/0002.
DATABASE_URL = env("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/resilient")
# The background alias's own address (fleet mode: PgBouncer's background pool, a pool of
# server connections of its own); the same database as DATABASE_URL by default.
DATABASE_BACKGROUND_URL = env("DATABASE_BACKGROUND_URL", default=DATABASE_URL)
# "pgbouncer" when DATABASE_URL points at PgBouncer in transaction pooling (make fleet,
# adr/0012): session state does not follow a client across transactions, so the
# timeouts are not sent in the startup packet (PgBouncer refuses `options`) but set by
# PgBouncer on each server connection of the pool (connect_query), and server-side
# cursors are off. "none": straight to PostgreSQL.
DB_POOLER = env("DB_POOLER", default="none")
if DB_POOLER not in {"none", "pgbouncer"}:
    raise ImproperlyConfigured("DB_POOLER must be 'none' or 'pgbouncer'.")

DB_CONNECT_TIMEOUT_S = env("DB_CONNECT_TIMEOUT_S", default=2, cast=int)  # libpq minimum is 2
DB_REQUEST_POOL_MIN = env("DB_REQUEST_POOL_MIN", default=2, cast=int)
# One per web thread (adr/0007), so the pool never queues a thread that has work for
# Postgres behind others; a thread gives its connection back before it waits on an HTTP
# dependency (resilience.http), so the pool only grows with the queries really running.
DB_REQUEST_POOL_MAX = env("DB_REQUEST_POOL_MAX", default=WEB_THREADS, cast=int)
# How long a request waits for a pooled connection before failing fast (503). The
# psycopg default of 30 s turns a Postgres outage into 30 s hangs.
DB_REQUEST_POOL_TIMEOUT_S = env("DB_REQUEST_POOL_TIMEOUT_S", default=1.0, cast=float)
# Waiters beyond this fail at once instead of queueing (psycopg's default is unbounded).
DB_REQUEST_POOL_MAX_WAITING = env("DB_REQUEST_POOL_MAX_WAITING", default=16, cast=int)
DB_REQUEST_STATEMENT_TIMEOUT_MS = env("DB_REQUEST_STATEMENT_TIMEOUT_MS", default=2000, cast=int)
DB_BACKGROUND_POOL_MIN = env("DB_BACKGROUND_POOL_MIN", default=0, cast=int)
DB_BACKGROUND_POOL_MAX = env("DB_BACKGROUND_POOL_MAX", default=4, cast=int)
DB_BACKGROUND_POOL_TIMEOUT_S = env("DB_BACKGROUND_POOL_TIMEOUT_S", default=5.0, cast=float)
DB_BACKGROUND_POOL_MAX_WAITING = env("DB_BACKGROUND_POOL_MAX_WAITING", default=8, cast=int)
DB_BACKGROUND_STATEMENT_TIMEOUT_MS = env(
    "DB_BACKGROUND_STATEMENT_TIMEOUT_MS", default=15000, cast=int
)
# Client-side read deadlines (resilience/socket_deadline.py): a query, commit or probe
# with no answer this long after it was sent has its socket shut down, because a
# network that swallows packets never delivers the statement timeout's error. Above the
# statement timeout, so a query the server cancels still ends cleanly.
DB_REQUEST_READ_TIMEOUT_S = env(
    "DB_REQUEST_READ_TIMEOUT_S", default=DB_REQUEST_STATEMENT_TIMEOUT_MS / 1000 + 1.0, cast=float
)
DB_BACKGROUND_READ_TIMEOUT_S = env(
    "DB_BACKGROUND_READ_TIMEOUT_S",
    default=DB_BACKGROUND_STATEMENT_TIMEOUT_MS / 1000 + 1.0,
    cast=float,
)
for _read_s, _statement_ms, _name in (
    (DB_REQUEST_READ_TIMEOUT_S, DB_REQUEST_STATEMENT_TIMEOUT_MS, "DB_REQUEST"),
    (DB_BACKGROUND_READ_TIMEOUT_S, DB_BACKGROUND_STATEMENT_TIMEOUT_MS, "DB_BACKGROUND"),
):
    if _read_s * 1000 <= _statement_ms:
        raise ImproperlyConfigured(
            f"{_name}_READ_TIMEOUT_S must be longer than {_name}_STATEMENT_TIMEOUT_MS."
        )
# TCP keepalives and TCP_USER_TIMEOUT on every Postgres socket (libpq): an idle pooled
# connection to a host that vanished (no RST: a partition, a dead VM) is found within
# idle + interval x count (45 s) instead of the kernel's two hours, and data sent that
# the peer never acknowledges fails the socket after DB_TCP_USER_TIMEOUT_MS. Requests
# are bounded sooner by the read deadline above; these cover the idle and the unwatched.
DB_KEEPALIVES_IDLE_S = env("DB_KEEPALIVES_IDLE_S", default=30, cast=int)
DB_KEEPALIVES_INTERVAL_S = env("DB_KEEPALIVES_INTERVAL_S", default=5, cast=int)
DB_KEEPALIVES_COUNT = env("DB_KEEPALIVES_COUNT", default=3, cast=int)
DB_TCP_USER_TIMEOUT_MS = env("DB_TCP_USER_TIMEOUT_MS", default=10000, cast=int)
DB_LOCK_TIMEOUT_MS = env("DB_LOCK_TIMEOUT_MS", default=1000, cast=int)
DB_IDLE_IN_TRANSACTION_TIMEOUT_MS = env("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", default=5000, cast=int)
# Migrations run without a statement timeout but with a short lock timeout, so a schema
# change never queues behind a long transaction while blocking every query behind it.
DB_MIGRATION_LOCK_TIMEOUT_MS = env("DB_MIGRATION_LOCK_TIMEOUT_MS", default=5000, cast=int)


def database_alias(
    *,
    url: str = DATABASE_URL,
    application_name: str,
    pool_min: int,
    pool_max: int,
    pool_timeout_s: float,
    pool_max_waiting: int,
    statement_timeout_ms: int,
    read_timeout_s: float,
) -> dict:
    """Build one alias of ``DATABASES`` with its own pool and server-side timeouts.

    The timeouts travel in the libpq startup packet (``options``), so they cost no extra
    round trip per checkout; behind PgBouncer (``DB_POOLER``) its pool sets them instead.
    ``application_name`` shows the alias in ``pg_stat_activity``.
    """
    config = dj_database_url.parse(url)
    config.update(
        {
            # Django's PostgreSQL backend with the `postgres` circuit breaker built in.
            "ENGINE": "resilience.db_backend",
            "CONN_MAX_AGE": 0,  # required with a pool: the pool owns connection lifetime
            "CONN_HEALTH_CHECKS": True,  # never hand out a connection killed by a restart
            # resilience.db_backend's client-side read deadline (not a libpq option).
            "CLIENT_READ_TIMEOUT_S": read_timeout_s,
            "OPTIONS": {
                "pool": {
                    "min_size": pool_min,
                    "max_size": pool_max,
                    "timeout": pool_timeout_s,
                    "max_waiting": pool_max_waiting,
                },
                "connect_timeout": DB_CONNECT_TIMEOUT_S,
                "keepalives": 1,
                "keepalives_idle": DB_KEEPALIVES_IDLE_S,
                "keepalives_interval": DB_KEEPALIVES_INTERVAL_S,
                "keepalives_count": DB_KEEPALIVES_COUNT,
                "tcp_user_timeout": DB_TCP_USER_TIMEOUT_MS,
                "application_name": application_name,
                "options": (
                    f"-c statement_timeout={statement_timeout_ms}"
                    f" -c lock_timeout={DB_LOCK_TIMEOUT_MS}"
                    f" -c idle_in_transaction_session_timeout={DB_IDLE_IN_TRANSACTION_TIMEOUT_MS}"
                ),
            },
        }
    )
    if DB_POOLER == "pgbouncer":
        del config["OPTIONS"]["options"]
        config["DISABLE_SERVER_SIDE_CURSORS"] = True  # a cursor cannot span transactions
    return config


DATABASES = {
    "default": database_alias(
        application_name="resilient-web",
        pool_min=DB_REQUEST_POOL_MIN,
        pool_max=DB_REQUEST_POOL_MAX,
        pool_timeout_s=DB_REQUEST_POOL_TIMEOUT_S,
        pool_max_waiting=DB_REQUEST_POOL_MAX_WAITING,
        statement_timeout_ms=DB_REQUEST_STATEMENT_TIMEOUT_MS,
        read_timeout_s=DB_REQUEST_READ_TIMEOUT_S,
    ),
    "background": database_alias(
        url=DATABASE_BACKGROUND_URL,
        application_name="resilient-background",
        pool_min=DB_BACKGROUND_POOL_MIN,
        pool_max=DB_BACKGROUND_POOL_MAX,
        pool_timeout_s=DB_BACKGROUND_POOL_TIMEOUT_S,
        pool_max_waiting=DB_BACKGROUND_POOL_MAX_WAITING,
        statement_timeout_ms=DB_BACKGROUND_STATEMENT_TIMEOUT_MS,
        read_timeout_s=DB_BACKGROUND_READ_TIMEOUT_S,
    ),
}
# Same database seen through both aliases in tests; schema migrates only on `default`.
DATABASES["background"]["TEST"] = {"MIRROR": "default"}
DATABASE_ROUTERS = ["resilience.db_routing.WorkloadRouter"]

# --- Redis: cache (and rate limits) ----------------------------------------------------
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
# Tens of milliseconds: a cache that answers slower than this is worse than no cache.
REDIS_CACHE_CONNECT_TIMEOUT_S = env("REDIS_CACHE_CONNECT_TIMEOUT_S", default=0.05, cast=float)
REDIS_CACHE_SOCKET_TIMEOUT_S = env("REDIS_CACHE_SOCKET_TIMEOUT_S", default=0.05, cast=float)
REDIS_CACHE_MAX_CONNECTIONS = env("REDIS_CACHE_MAX_CONNECTIONS", default=32, cast=int)
CACHE_KEY_PREFIX = env("CACHE_KEY_PREFIX", default="resilient")

CACHES = {
    "default": {
        "BACKEND": "resilience.cache.ResilientRedisCache",  # bypassed while Redis is down
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": CACHE_KEY_PREFIX,
        "OPTIONS": {
            # Passed to redis-py's connection pool. No client-level retry: a cache miss
            # is cheaper than a retry loop (redis-py 8 would otherwise retry 10 times).
            "socket_connect_timeout": REDIS_CACHE_CONNECT_TIMEOUT_S,
            "socket_timeout": REDIS_CACHE_SOCKET_TIMEOUT_S,
            "max_connections": REDIS_CACHE_MAX_CONNECTIONS,
            "retry": Retry(NoBackoff(), retries=0),
        },
    }
}

# --- Celery (namespace CELERY_, read by config/celery.py) -------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_TASK_IGNORE_RESULT = True  # outcomes are stored in Postgres, not a result backend
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = TIME_ZONE
# A task is acknowledged after it ran, and put back when its worker dies mid-way, so a
# crash never loses work. Tasks must therefore be idempotent.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env("CELERY_TASK_SOFT_TIME_LIMIT_S", default=25, cast=int)
CELERY_TASK_TIME_LIMIT = env("CELERY_TASK_TIME_LIMIT_S", default=30, cast=int)
CELERY_BROKER_SOCKET_TIMEOUT_S = env("CELERY_BROKER_SOCKET_TIMEOUT_S", default=2.0, cast=float)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Without these kombu waits forever on a Redis that accepts but never answers. The
    # socket timeout stays above kombu's 1 s BRPOP poll.
    "socket_timeout": CELERY_BROKER_SOCKET_TIMEOUT_S,
    "socket_connect_timeout": CELERY_BROKER_SOCKET_TIMEOUT_S,
    # Longer than any task's hard time limit; long schedules live in Postgres (adr/0002).
    "visibility_timeout": 3600,
    "max_connections": 20,
}
# A broker behind Redis Sentinel (make fleet, adr/0012): CELERY_BROKER_URL lists the
# Sentinels ("sentinel://host:port;sentinel://..."), this names the monitored master.
BROKER_SENTINEL_MASTER = env("CELERY_BROKER_MASTER_NAME", default="")
if BROKER_SENTINEL_MASTER:
    CELERY_BROKER_TRANSPORT_OPTIONS |= {
        "master_name": BROKER_SENTINEL_MASTER,
        # Asking a Sentinel who the master is is bounded like any broker call.
        "sentinel_kwargs": {
            "socket_timeout": CELERY_BROKER_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": CELERY_BROKER_SOCKET_TIMEOUT_S,
        },
    }
CELERY_BROKER_CONNECTION_TIMEOUT = CELERY_BROKER_SOCKET_TIMEOUT_S
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = 10
# Publishing from a web request is bounded: two quick retries, then the caller decides
# (the outbox keeps the event). Jitter is not offered by kombu here; the window is short.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0.1,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_TASK_DEFAULT_QUEUE = "default"
# Queues and routes in one place: webhook delivery never shares workers with the rest.
CELERY_TASK_QUEUES = (Queue("default"), Queue("webhooks"))
# One queue for everything (WEBHOOKS_QUEUE=default) gives up the bulkhead: adr/0006.
WEBHOOKS_QUEUE = env("WEBHOOKS_QUEUE", default="webhooks")
CELERY_TASK_ROUTES = {
    # The outbox sweep is bookkeeping, not delivery: it must run while webhooks is flooded.
    "webhooks.tasks.sweep_outbox": {"queue": "default"},
    "webhooks.tasks.*": {"queue": WEBHOOKS_QUEUE},
}
# Deferred authorisation of `pending_payment` orders: capped exponential backoff with
# full jitter, scheduled in Postgres and swept by beat (adr/0003).
ORDERS_DEFERRED_PAYMENT_BASE_S = env("ORDERS_DEFERRED_PAYMENT_BASE_S", default=2.0, cast=float)
ORDERS_DEFERRED_PAYMENT_CAP_S = env("ORDERS_DEFERRED_PAYMENT_CAP_S", default=300.0, cast=float)
ORDERS_DEFERRED_PAYMENT_MAX_ATTEMPTS = env(
    "ORDERS_DEFERRED_PAYMENT_MAX_ATTEMPTS", default=20, cast=int
)
ORDERS_DEFERRED_PAYMENT_SWEEP_S = env("ORDERS_DEFERRED_PAYMENT_SWEEP_S", default=5.0, cast=float)
# The catch-up after a payments outage is paced: each sweep enqueues at most this rate x
# its period (20/s: 100 per 5 s sweep), whatever the period. A fixed batch of 100 made a
# shorter period a faster catch-up: the chaos stacks' 1 s sweep paid ~800 deferred
# orders at up to 100/s, the worker took the CPU the web processes needed, and their
# queue budgets shed live traffic for 25 s after the heal (docs/chaos/payments-slow/).
# A deferred order is already accepted: paying it a little later costs its user nothing.
ORDERS_DEFERRED_PAYMENT_RATE_PER_S = env(
    "ORDERS_DEFERRED_PAYMENT_RATE_PER_S", default=20.0, cast=float
)
ORDERS_DEFERRED_PAYMENT_BATCH = max(
    1, math.ceil(ORDERS_DEFERRED_PAYMENT_RATE_PER_S * ORDERS_DEFERRED_PAYMENT_SWEEP_S)
)
# A swept order is not swept again for this long while its task waits in the queue; a
# lost task's order is due again after it. Longer than a busy queue's wait.
ORDERS_DEFERRED_PAYMENT_LEASE_S = env("ORDERS_DEFERRED_PAYMENT_LEASE_S", default=60.0, cast=float)
ACCOUNTS_TOKEN_PURGE_INTERVAL_S = env("ACCOUNTS_TOKEN_PURGE_INTERVAL_S", default=3600, cast=int)
# More entries join at the end of this file (the idempotency block).
CELERY_BEAT_SCHEDULE = {
    "sweep-deferred-payments": {
        "task": "orders.tasks.sweep_deferred_payments",
        "schedule": ORDERS_DEFERRED_PAYMENT_SWEEP_S,
    },
    # Pending refunds (payments was unavailable) ride the same schedule (orders.refunds).
    "sweep-pending-refunds": {
        "task": "orders.refund_tasks.sweep_pending_refunds",
        "schedule": ORDERS_DEFERRED_PAYMENT_SWEEP_S,
    },
    "purge-expired-tokens": {
        "task": "accounts.tasks.purge_expired_tokens",
        "schedule": ACCOUNTS_TOKEN_PURGE_INTERVAL_S,
    },
}

# --- API ----------------------------------------------------------------------------
API_MAX_BODY_BYTES = env("API_MAX_BODY_BYTES", default=64 * 1024, cast=int)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
API_PAGE_SIZE = env("API_PAGE_SIZE", default=20, cast=int)
API_MAX_PAGE_SIZE = env("API_MAX_PAGE_SIZE", default=100, cast=int)
# Seconds a client is told to wait (Retry-After) when a dependency is unavailable.
API_UNAVAILABLE_RETRY_AFTER_S = env("API_UNAVAILABLE_RETRY_AFTER_S", default=2, cast=int)
# /readyz is 200 while any of these answers (each can serve documented answers alone:
# Postgres everything, Redis stale reads); 503 only when none does (adr/0009).
HEALTH_ANSWER_SOURCES = env("HEALTH_ANSWER_SOURCES", default=["postgres", "redis"], cast=list)
ACCOUNTS_TOKEN_TTL_S = env("ACCOUNTS_TOKEN_TTL_S", default=7 * 24 * 3600, cast=int)
# How long a token stays recognised from Redis while Postgres is down (accounts.authentication).
ACCOUNTS_TOKEN_CACHE_S = env("ACCOUNTS_TOKEN_CACHE_S", default=600, cast=int)
ORDERS_CURRENCIES = ["EUR", "USD", "GBP", "CHF", "JPY", "SEK"]
ORDERS_MAX_ITEMS = 100
ORDERS_MAX_QUANTITY = 10_000
ORDERS_MAX_UNIT_PRICE = 100_000_000  # minor units
ORDERS_REPORT_MAX_DAYS = 366
# The report is reused this long; any order read is served stale from Redis for this
# long while Postgres is unavailable (resilience.stale).
ORDERS_REPORT_FRESH_S = env("ORDERS_REPORT_FRESH_S", default=60, cast=int)
ORDERS_STALE_READ_S = env("ORDERS_STALE_READ_S", default=3600, cast=int)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ExpiringTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "common.pagination.BoundedPageNumberPagination",
    "PAGE_SIZE": API_PAGE_SIZE,
    "EXCEPTION_HANDLER": "common.exception_handler.problem_exception_handler",
    # Documents every error answer and response header of each operation (common.schema).
    "DEFAULT_SCHEMA_CLASS": "common.schema.ProblemAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Resilient backend API",
    "DESCRIPTION": (
        "Accounts, orders and webhooks. Errors are RFC 9457 problem+json documents "
        "(component `Problem`) with a stable `code`; each operation lists the statuses "
        "and codes it can answer. 429 and 503 carry `Retry-After`; every answer carries "
        "`RateLimit` and `RateLimit-Policy`. Strings never contain NUL characters."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "common.schema.link_hook",
    ],
}

# --- Metrics ----------------------------------------------------------------------------
PROMETHEUS_EXPORT_MIGRATIONS = False
# Who may read GET /metrics on the web port: CIDRs, or unset for everyone (development;
# production sets loopback by default, config/settings/production.py, docs/metrics.md).
METRICS_ALLOWED_NETWORKS = env("METRICS_ALLOWED_NETWORKS", default=None, cast=list)

# --- Logging: one JSON object per line, tagged with the request id -------------------------
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "common.logging.RequestIdFilter"}},
    "formatters": {"json": {"()": "common.logging.JsonFormatter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django.server": {"level": "WARNING"},
    },
}

# --- Resilience: one policy per dependency (docs/timeouts.md is generated from this) ------
# Composition, outermost first: deadline -> bulkhead -> retry -> breaker -> per-attempt
# timeout (adr/0003). Every key is checked at start-up (resilience.checks).
PAYMENTS_URL = env("PAYMENTS_URL", default="http://127.0.0.1:8101")
REQUEST_DEADLINE_S = env("REQUEST_DEADLINE_S", default=5.0, cast=float)
RESILIENCE_ENABLED = env("RESILIENCE_ENABLED", default=True, cast=bool)
# Payments' healthy latency: p99 of one authorisation, measured with the service's own
# client (`python -m bench payments_latency`: 10.5 and 14.0 ms on an idle 2-core host).
# A user request may spend PAYMENTS_BUDGET_HEADROOM times that on payments in total: the
# same command on the host loaded by five test suites measured 143 and 161 ms (10x), and
# twice that leaves room for one retry of a refused connection (adr/0007).
PAYMENTS_HEALTHY_P99_S = env("PAYMENTS_HEALTHY_P99_S", default=0.014, cast=float)
PAYMENTS_BUDGET_HEADROOM = env("PAYMENTS_BUDGET_HEADROOM", default=20.0, cast=float)
PAYMENTS_REQUEST_BUDGET_S = env(
    "PAYMENTS_REQUEST_BUDGET_S",
    default=round(min(REQUEST_DEADLINE_S, PAYMENTS_HEALTHY_P99_S * PAYMENTS_BUDGET_HEADROOM), 3),
    cast=float,
)
RESILIENCE = {
    # Every request gets this time budget; outbound timeouts are clipped to what is left.
    "request_deadline_s": REQUEST_DEADLINE_S,
    # Concurrency of each kind of process (config/worker_model.py): a bulkhead that
    # runs in a kind must be smaller than this, and the bulkheads of one kind together
    # leave at least `bulkhead_reserved_share` of it to everything else (adr/0007).
    "process_concurrency": {
        "web": WEB_THREADS,
        "default": WORKER_DEFAULT_CONCURRENCY,
        "webhooks": WORKER_WEBHOOKS_CONCURRENCY,
    },
    "bulkhead_reserved_share": env("BULKHEAD_RESERVED_SHARE", default=0.5, cast=float),
    # Answer each request's time per dependency as a Server-Timing header (names and
    # milliseconds only; resilience.timing). The chaos reports count from it the user
    # requests that waited on a dependency after its breaker opened.
    "server_timing": env("SERVER_TIMING_ENABLED", default=True, cast=bool),
    # Redis that holds shared breaker state (payments, webhook hosts, postgres).
    "breaker_state_redis_url": env("BREAKER_STATE_REDIS_URL", default=REDIS_URL),
    # A process re-reads a shared breaker's state from Redis at most this often on the
    # hot path (every Postgres query passes a breaker): an opening elsewhere is seen
    # within this, at one Redis round trip per 0.1 s instead of one per query.
    "breaker_state_cache_s": env("BREAKER_STATE_CACHE_S", default=0.1, cast=float),
    # Recovery probes of open breakers, off the user path (resilience.probes, adr/0008).
    "probes": {
        "enabled": env("BREAKER_PROBES_ENABLED", default=True, cast=bool),
        # How often the runner looks at open breakers (jittered 0.5x..1.5x).
        "tick_s": env("BREAKER_PROBE_TICK_S", default=0.5, cast=float),
        # User calls become half-open trials again when no runner reported for this long.
        "stale_after_s": env("BREAKER_PROBE_STALE_AFTER_S", default=5.0, cast=float),
        # One prober per dependency for the fleet; longer than the slowest probe (2 s).
        "lock_ttl_s": env("BREAKER_PROBE_LOCK_TTL_S", default=5.0, cast=float),
    },
    "dependencies": {
        "postgres": {
            "timeouts": {
                "connect_s": DB_CONNECT_TIMEOUT_S,
                "pool_wait_s": DB_REQUEST_POOL_TIMEOUT_S,
                "statement_s": DB_REQUEST_STATEMENT_TIMEOUT_MS / 1000,
                # Client-side: no answer this long after a query was sent shuts its socket.
                "read_s": DB_REQUEST_READ_TIMEOUT_S,
            },
            # Only connection-level failures and timeouts count (resilience.db). Every
            # query is a call, so a healthy request adds several successes and a failing
            # one a single failure: a count window of 10 forgets the successes of before
            # an outage within 5 failing requests (a time window would be dominated by
            # them). A healthy query takes milliseconds; 1 s is half the statement timeout.
            "breaker": {
                "window": env("POSTGRES_BREAKER_WINDOW", default="count"),
                "window_size": env("POSTGRES_BREAKER_WINDOW_SIZE", default=10, cast=int),
                "minimum_calls": env("POSTGRES_BREAKER_MIN_CALLS", default=5, cast=int),
                "failure_rate": env("POSTGRES_BREAKER_FAILURE_RATE", default=0.5, cast=float),
                "slow_call_s": env("POSTGRES_BREAKER_SLOW_CALL_S", default=1.0, cast=float),
                "slow_call_rate": env("POSTGRES_BREAKER_SLOW_CALL_RATE", default=0.8, cast=float),
                "half_open_calls": env("POSTGRES_BREAKER_HALF_OPEN_CALLS", default=3, cast=int),
                "fail_max": env("POSTGRES_BREAKER_FAIL_MAX", default=3, cast=int),
                "reset_timeout_s": env("POSTGRES_BREAKER_RESET_S", default=5.0, cast=float),
                # In Redis while it answers, so one process's discovery spares the others.
                "shared": env("POSTGRES_BREAKER_SHARED", default=True, cast=bool),
                "probe": env("POSTGRES_BREAKER_PROBE", default="postgres") or None,
            },
        },
        "redis": {
            "timeouts": {
                "connect_s": REDIS_CACHE_CONNECT_TIMEOUT_S,
                "read_s": REDIS_CACHE_SOCKET_TIMEOUT_S,
            },
            # Process-local: the breaker that guards Redis cannot keep its state there.
            # Half of the last 100 calls: one stall of Redis or of a saturated host
            # (tens of ms, 183 ms measured on 2 busy cores) times out every call in
            # flight at once, up to a process's 16 threads, and that is no outage; a
            # hang fails 50 calls within about three 50 ms timeouts per thread. Three
            # failures in a row opened it on such a stall (adr/0010, adr/0003).
            "breaker": {
                "window": env("REDIS_BREAKER_WINDOW", default="count"),
                "window_size": env("REDIS_BREAKER_WINDOW_SIZE", default=100, cast=int),
                "minimum_calls": env("REDIS_BREAKER_MIN_CALLS", default=20, cast=int),
                "failure_rate": env("REDIS_BREAKER_FAILURE_RATE", default=0.5, cast=float),
                "fail_max": env("REDIS_BREAKER_FAIL_MAX", default=3, cast=int),
                "reset_timeout_s": env("REDIS_BREAKER_RESET_S", default=2.0, cast=float),
                "shared": False,
                "probe": env("REDIS_BREAKER_PROBE", default="redis") or None,
            },
        },
        "payments": {
            "base_url": PAYMENTS_URL,
            "timeouts": {
                "connect_s": env("PAYMENTS_CONNECT_TIMEOUT_S", default=0.25, cast=float),
                # Background attempts (deferred authorisations) get the full read timeout.
                "read_s": env("PAYMENTS_READ_TIMEOUT_S", default=1.0, cast=float),
                # A user request spends at most this on payments, retries included.
                "request_budget_s": PAYMENTS_REQUEST_BUDGET_S,
            },
            "retry": {
                "max_attempts": env("PAYMENTS_MAX_ATTEMPTS", default=3, cast=int),
                "base_s": 0.05,
                "cap_s": 0.5,
                "retry_after_cap_s": 1.0,
                # Retries may add at most 20% to the calls of the last 10 s, plus a floor.
                "budget_ratio": 0.2,
                "budget_window_s": 10.0,
                "budget_min_retries": 3,
            },
            # Opens on what users feel: half of the last 10 calls failed, or took longer
            # than 0.4 s (healthy: tens of ms; the 800 ms slow fault is 2x this, under
            # the 1 s read timeout). docs/patterns/circuit-breaker.md explains the numbers.
            "breaker": {
                "window": env("PAYMENTS_BREAKER_WINDOW", default="count"),
                "window_size": env("PAYMENTS_BREAKER_WINDOW_SIZE", default=10, cast=int),
                "minimum_calls": env("PAYMENTS_BREAKER_MIN_CALLS", default=5, cast=int),
                "failure_rate": env("PAYMENTS_BREAKER_FAILURE_RATE", default=0.5, cast=float),
                "slow_call_s": env("PAYMENTS_BREAKER_SLOW_CALL_S", default=0.4, cast=float),
                "slow_call_rate": env("PAYMENTS_BREAKER_SLOW_CALL_RATE", default=0.5, cast=float),
                "half_open_calls": env("PAYMENTS_BREAKER_HALF_OPEN_CALLS", default=3, cast=int),
                "fail_max": env("PAYMENTS_BREAKER_FAIL_MAX", default=5, cast=int),
                "reset_timeout_s": env("PAYMENTS_BREAKER_RESET_S", default=5.0, cast=float),
                "shared": True,
                "probe": env("PAYMENTS_BREAKER_PROBE", default="http") or None,
            },
            # A quarter of a web process's threads (adr/0007): slow payments can hold
            # these and nothing more; orders beyond them are deferred at once.
            "bulkhead": {
                "max_concurrent": env("PAYMENTS_BULKHEAD_MAX", default=4, cast=int),
                "max_wait_s": env("PAYMENTS_BULKHEAD_WAIT_S", default=0.05, cast=float),
                "scope": "process",
                "runs_in": "web",
            },
        },
        # Template for webhook targets: one breaker per target host ("webhook:<host>").
        "webhook": {
            "per_target": True,  # called as webhook:<host>, one breaker per customer host
            "timeouts": {
                "connect_s": env("WEBHOOK_CONNECT_TIMEOUT_S", default=1.0, cast=float),
                "read_s": env("WEBHOOK_READ_TIMEOUT_S", default=5.0, cast=float),
            },
            # Consecutive failures and in-band trials: a customer's endpoint is not ours
            # to probe, and its traffic is too sparse and bursty for a rate.
            "breaker": {
                "window": "consecutive",
                "fail_max": env("WEBHOOK_BREAKER_FAIL_MAX", default=5, cast=int),
                "reset_timeout_s": env("WEBHOOK_BREAKER_RESET_S", default=60.0, cast=float),
                "shared": True,
            },
            # Concurrent deliveries to one target host across the whole worker fleet
            # (a prefork child runs one task, so a per-process semaphore could never
            # fill): one slow customer holds at most this many webhook workers (adr/0007).
            "bulkhead": {
                "max_concurrent": env("WEBHOOK_HOST_MAX_CONCURRENT", default=2, cast=int),
                "max_wait_s": 0.0,
                "scope": "fleet",
                "runs_in": "webhooks",
            },
        },
    },
}

# --- Load shedding: adaptive concurrency limit per web process (adr/0010) -----------------
# Requests in flight per process never exceed the threads (WEB_THREADS), so the limit
# lives between CONCURRENCY_MIN_LIMIT and the threads; the static mode (for comparison)
# fixes it. Each priority class has a guaranteed share of the limit and a queue budget:
# a request that waited longer than that before a thread took it is shed at once.
# On by default; CONCURRENCY_LIMIT_ENABLED=false turns it off (requests then queue in
# gunicorn). Evidence: docs/chaos/overload/ and `python -m bench overload`.
RESILIENCE_CONCURRENCY = {
    "enabled": env("CONCURRENCY_LIMIT_ENABLED", default=True, cast=bool),
    "mode": env("CONCURRENCY_LIMIT_MODE", default="adaptive"),
    "initial_limit": WEB_THREADS,
    "min_limit": env("CONCURRENCY_MIN_LIMIT", default=4, cast=int),
    "max_limit": WEB_THREADS,
    "static_limit": env("CONCURRENCY_STATIC_LIMIT", default=WEB_THREADS, cast=int),
    # The adaptive limit: Envoy's gradient controller. Per window of completed requests,
    # limit x clamp(minRTT x (1 + buffer) / sampleRTT, 0.5, 2) + sqrt(limit), where
    # sampleRTT is the window's mean latency and minRTT the mean of
    # min_rtt.requests requests run with the limit pinned to min_rtt.concurrency, measured
    # every interval_s (plus up to jitter x interval_s). Sooner when the latency is not
    # this process's queue: once a dive has cut the limit by half and the requests
    # admitted since are no faster, their latency becomes minRTT (postgres-slow); once
    # the limit has sat at min_limit for 5 windows, the last window's does. The limit is
    # cut at most once per round trip (not again before a request admitted after the
    # last cut has finished: the windows before hold only old news). A reference
    # that is measured, not averaged, cannot drift up during a long overload (Gradient2's
    # long average did, and let the limit grow back into it: adr/0010), and one that rose
    # for a reason fewer requests cannot mend (the worker's catch-up after an outage
    # taking the CPU, a slower Postgres) is measured again within seconds.
    # Low numbers because each process runs one Python thread at a time: beyond a few
    # requests in flight, more only share the GIL and the cores, and every one is slower.
    "algorithm": env("CONCURRENCY_LIMIT_ALGORITHM", default="gradient"),
    "min_rtt": {
        "interval_s": env("CONCURRENCY_MIN_RTT_INTERVAL_S", default=30.0, cast=float),
        "jitter": 0.1,
        "requests": env("CONCURRENCY_MIN_RTT_REQUESTS", default=20, cast=int),
        # A measurement ends after this even with fewer requests (light traffic, or slots
        # held by requests waiting on a slow dependency): its pin costs at most this.
        "max_s": env("CONCURRENCY_MIN_RTT_MAX_S", default=1.0, cast=float),
        "concurrency": env("CONCURRENCY_MIN_RTT_CONCURRENCY", default=3, cast=int),
        "buffer": env("CONCURRENCY_MIN_RTT_BUFFER", default=0.25, cast=float),
        # A request beyond the pin waits this long for a slot before it is shed: the
        # pin's 20 requests, 3 at a time, take 70 to 200 ms at a healthy 10 to 30 ms
        # each, so a pinned slot frees within one request's time. 0: shed at once.
        "pin_wait_s": env("CONCURRENCY_MIN_RTT_PIN_WAIT_S", default=0.1, cast=float),
    },
    # Shared by both algorithms: windows of window_s and at least min_window_samples
    # requests. Gradient2 (CONCURRENCY_LIMIT_ALGORITHM=gradient2, for comparison):
    # limit x clamp(tolerance x long / short RTT, 0.5, 1) + min(queue_size, sqrt(limit)),
    # smoothed; the long RTT is an exponential average over long_window_samples windows.
    "gradient": {
        # Means, not medians: the median of a mix of cheap reads and tenfold dearer order
        # creations falls on either side by chance, and the limit swung with it (adr/0010).
        # "percentile" uses rtt_percentile instead (Envoy's default: the median).
        "rtt_statistic": env("CONCURRENCY_RTT_STATISTIC", default="mean"),
        "rtt_percentile": env("CONCURRENCY_RTT_PERCENTILE", default=0.5, cast=float),
        "tolerance": env("CONCURRENCY_RTT_TOLERANCE", default=1.5, cast=float),
        "smoothing": env("CONCURRENCY_SMOOTHING", default=0.5, cast=float),
        "window_s": env("CONCURRENCY_WINDOW_S", default=0.25, cast=float),
        "min_window_samples": 4,
        "long_window_samples": env("CONCURRENCY_LONG_WINDOW", default=60, cast=int),
        "queue_size": 2.0,
    },
    # Queue budgets (Facebook's "Fail at Scale", CoDel): a request that waited longer than
    # its class's budget before reaching Django is shed at once. While the queue drains now
    # and then, a burst may wait the long budget; once it stands (no request found it
    # nearly empty for standing_queue.after_s), only the short one, so what is served
    # under a standing overload is served soon after it arrived.
    "priorities": {
        "critical": {
            "share": 0.5,
            "queue_budget_s": env("CONCURRENCY_CRITICAL_QUEUE_S", default=1.0, cast=float),
            "standing_queue_budget_s": env(
                "CONCURRENCY_CRITICAL_STANDING_QUEUE_S", default=0.2, cast=float
            ),
        },
        "normal": {
            "share": 0.3,
            "queue_budget_s": env("CONCURRENCY_NORMAL_QUEUE_S", default=0.5, cast=float),
            "standing_queue_budget_s": env(
                "CONCURRENCY_NORMAL_STANDING_QUEUE_S", default=0.1, cast=float
            ),
        },
        "best_effort": {
            "share": 0.2,
            "queue_budget_s": env("CONCURRENCY_BEST_EFFORT_QUEUE_S", default=0.25, cast=float),
            "standing_queue_budget_s": env(
                "CONCURRENCY_BEST_EFFORT_STANDING_QUEUE_S", default=0.05, cast=float
            ),
        },
    },
    "standing_queue": {
        # A wait under this means the request found the queue (nearly) empty.
        "empty_below_s": env("CONCURRENCY_QUEUE_EMPTY_S", default=0.01, cast=float),
        # Facebook's N (100 ms there); longer here, where one request takes tens of ms.
        "after_s": env("CONCURRENCY_STANDING_QUEUE_AFTER_S", default=0.5, cast=float),
        # The order in which gunicorn's threads take queued requests: "fifo", gunicorn's
        # own, as shipped; "adaptive_lifo" (resilience.request_queue, for comparison):
        # oldest first while the oldest waited under empty_below_s, newest first beyond
        # it, the oldest again once it waited longer than every class's standing budget
        # (it is shed at once). Measured no better here (adr/0010); shedding off: fifo.
        "thread_queue": env("CONCURRENCY_THREAD_QUEUE", default="fifo"),
    },
    "default_priority": "normal",
    # Probes and scrapes must answer under overload; static files cost nothing.
    "exempt_paths": ["/healthz", "/readyz", "/metrics", "/static/"],
    # Retry-After of a shed request: this plus uniform(0, jitter), rounded up.
    "retry_after_s": env("CONCURRENCY_RETRY_AFTER_S", default=1.0, cast=float),
    "retry_after_jitter_s": env("CONCURRENCY_RETRY_AFTER_JITTER_S", default=2.0, cast=float),
}

# --- Idempotency keys (resilience.idempotency; docs/patterns/idempotency-keys.md) ---------
# Keys are kept at least 24 h (Stripe's floor; published in the API docs), 72 h by default
# as in brandur's reaper. Shorter would turn a client's late retry into a second order.
IDEMPOTENCY_RETENTION_S = env("IDEMPOTENCY_RETENTION_S", default=72 * 3600, cast=int)
if IDEMPOTENCY_RETENTION_S < 24 * 3600:
    raise ImproperlyConfigured("IDEMPOTENCY_RETENTION_S must be at least 86400 (24 h).")
# A lock younger than this means the first request still runs (409); an older one belongs
# to a dead process and may be taken over. Above the gunicorn timeout (30 s) so a live
# request is never overtaken.
IDEMPOTENCY_LOCK_TIMEOUT_S = env("IDEMPOTENCY_LOCK_TIMEOUT_S", default=60, cast=int)
# Retry-After on a 409 for a key in flight (capped by the lock's remaining lifetime).
IDEMPOTENCY_CONFLICT_RETRY_AFTER_S = env("IDEMPOTENCY_CONFLICT_RETRY_AFTER_S", default=1, cast=int)
# Scopes whose endpoints refuse a request without a key (400), e.g. "orders.create".
IDEMPOTENCY_REQUIRED_SCOPES = env("IDEMPOTENCY_REQUIRED_SCOPES", default=[], cast=list)
# Response headers replayed with the stored body (Content-Type always). Per-request
# headers such as RateLimit-* and X-Request-ID are never stored.
IDEMPOTENCY_REPLAY_HEADERS = ["Content-Type", "Location", "Content-Location"]
# The completer re-drives records unfinished and untouched for this long: longer than the
# lock timeout, so the client's own retry usually resumes first.
IDEMPOTENCY_COMPLETER_AFTER_S = env("IDEMPOTENCY_COMPLETER_AFTER_S", default=300, cast=int)
if IDEMPOTENCY_COMPLETER_AFTER_S <= IDEMPOTENCY_LOCK_TIMEOUT_S:
    raise ImproperlyConfigured("IDEMPOTENCY_COMPLETER_AFTER_S must exceed the lock timeout.")
IDEMPOTENCY_COMPLETER_INTERVAL_S = env("IDEMPOTENCY_COMPLETER_INTERVAL_S", default=60, cast=int)
IDEMPOTENCY_COMPLETER_BATCH_SIZE = env("IDEMPOTENCY_COMPLETER_BATCH_SIZE", default=20, cast=int)
IDEMPOTENCY_PURGE_INTERVAL_S = env("IDEMPOTENCY_PURGE_INTERVAL_S", default=3600, cast=int)
IDEMPOTENCY_PURGE_BATCH_SIZE = env("IDEMPOTENCY_PURGE_BATCH_SIZE", default=1000, cast=int)
# At most this many batches per run; the next run takes the rest.
IDEMPOTENCY_PURGE_MAX_BATCHES = env("IDEMPOTENCY_PURGE_MAX_BATCHES", default=50, cast=int)
CELERY_BEAT_SCHEDULE |= {
    "idempotency-complete-stale": {
        "task": "resilience.tasks.complete_stale_idempotency_records",
        "schedule": IDEMPOTENCY_COMPLETER_INTERVAL_S,
    },
    "idempotency-purge-expired": {
        "task": "resilience.tasks.purge_expired_idempotency_records",
        "schedule": IDEMPOTENCY_PURGE_INTERVAL_S,
    },
}
# --- end of idempotency keys ---------------------------------------------------------------

# --- Rate limiting (resilience.ratelimit; adr/0004, docs/configuration.md) ---------------
# Token buckets in Redis, one atomic script per decision, a per-process fallback while
# Redis is unavailable. Capacity is the burst; refill_rate the sustained rate per second.
RATELIMIT_REDIS_URL = env("RATELIMIT_REDIS_URL", default=REDIS_URL)
# Processes sharing each limit (web instances x gunicorn workers): while Redis is down
# each process enforces capacity / instances and refill_rate / instances on its own.
RATELIMIT_INSTANCES = env("RATELIMIT_INSTANCES", default=2, cast=int)
_RATELIMIT_POLICIES = {
    # Everything under /api/, per client IP, checked before authentication.
    "flood": {"capacity": 300, "refill_rate": 100.0, "scope": "ip", "fail": "open"},
    "signup": {"capacity": 10, "refill_rate": 10 / 3600, "scope": "ip", "fail": "open"},
    # Login: per IP against credential stuffing, per submitted email against distributed
    # brute force; both checked in one decision.
    "login_ip": {
        "capacity": 30,
        "refill_rate": 30 / 900,
        "scope": "ip",
        "fail": "open",
        "slot": "login",
    },
    "login_username": {
        "capacity": 5,
        "refill_rate": 5 / 900,
        "scope": "username",
        "username_field": "email",
        "fail": "open",
        # Decided with login_ip in one script: one hash tag, one Redis Cluster slot.
        "slot": "login",
    },
    "orders_create": {"capacity": 30, "refill_rate": 1.0, "scope": "user", "fail": "open"},
    # Refunds are rarer than orders: a burst of 10, then one every 6 s, per user.
    "orders_refund": {"capacity": 10, "refill_rate": 10 / 60, "scope": "user", "fail": "open"},
    # The expensive query. Fails closed: its cache lives in the same Redis, so while Redis
    # is down every call would run the full query on Postgres (adr/0004).
    "orders_report": {"capacity": 5, "refill_rate": 5 / 60, "scope": "user", "fail": "closed"},
}
# Operators tune a policy without a code change, e.g.
# RATELIMIT_POLICY_OVERRIDES='{"flood": {"capacity": 600}}'; unknown keys fail the check.
for _name, _spec in env("RATELIMIT_POLICY_OVERRIDES", default={}, cast=json.loads).items():
    _RATELIMIT_POLICIES[_name] = {**_RATELIMIT_POLICIES.get(_name, {}), **_spec}
# Safe roll-out of a new or tighter limit: count would-be refusals, refuse nothing.
for _name in env("RATELIMIT_DRY_RUN_POLICIES", default=[], cast=list):
    _RATELIMIT_POLICIES.setdefault(_name, {})["dry_run"] = True
RESILIENCE_RATELIMIT = {
    "enabled": env("RATELIMIT_ENABLED", default=True, cast=bool),
    "key_prefix": env("RATELIMIT_KEY_PREFIX", default="rl"),
    "redis": {
        "url": RATELIMIT_REDIS_URL,
        # Never the cache's client. Decisions run on one connection per serving thread
        # (bounded by WEB_WORKERS x WEB_THREADS); this small pool serves operator calls
        # (ratelimit show/reset). No client retry (redis-py 8 would retry 10x).
        "max_connections": env("RATELIMIT_REDIS_MAX_CONNECTIONS", default=16, cast=int),
        "pool_timeout_s": env("RATELIMIT_REDIS_POOL_TIMEOUT_S", default=0.01, cast=float),
        "socket_timeout_s": env("RATELIMIT_REDIS_SOCKET_TIMEOUT_S", default=0.05, cast=float),
        "connect_timeout_s": env("RATELIMIT_REDIS_CONNECT_TIMEOUT_S", default=0.05, cast=float),
    },
    "instances": RATELIMIT_INSTANCES,
    # Upper bound of fallback buckets per process (full buckets are dropped first).
    "fallback_max_keys": env("RATELIMIT_FALLBACK_MAX_KEYS", default=10_000, cast=int),
    # CIDRs of our own proxies (nginx, load balancer); only they may set X-Forwarded-For.
    "trusted_proxies": env("RATELIMIT_TRUSTED_PROXIES", default=[], cast=list),
    # One IPv6 host owns a whole /64: bucket it as one client.
    "ipv6_prefix_length": env("RATELIMIT_IPV6_PREFIX_LENGTH", default=64, cast=int),
    # Retry-After of a fail-closed policy's 503 while Redis is down (the breaker's reset).
    "unavailable_retry_after_s": env("RATELIMIT_UNAVAILABLE_RETRY_AFTER_S", default=2, cast=int),
    "middleware": {"policy": "flood", "path_prefixes": ["/api/"]},
    "policies": _RATELIMIT_POLICIES,
    # A candidate beside a live policy, in dry run, for the runbook's "would a higher
    # limit fit?": RATELIMIT_CANDIDATE_POLICIES='{"login_ip": {"capacity": 60}}'.
    "candidates": env("RATELIMIT_CANDIDATE_POLICIES", default={}, cast=json.loads),
}
# django-ratelimit, for fixed-window business rules only (resilience.ratelimit.business).
# Fail closed here so the wrapper sees a cache failure and applies each rule's own
# fail_open; the client IP follows the same trusted-proxy rules as the token buckets.
RATELIMIT_USE_CACHE = "default"
RATELIMIT_FAIL_OPEN = False
RATELIMIT_CACHE_PREFIX = "rl-fw:"
RATELIMIT_IP_META_KEY = "resilience.ratelimit.client_ip.ratelimit_ip_meta"
# --- end of rate limiting ------------------------------------------------------------------

# --- Webhooks (webhooks app; adr/0006, docs/configuration.md#webhooks) ---------------------
# Targets allowed although they resolve to loopback/private addresses: IPs, CIDRs or exact
# host names. Empty in production; local and test settings allow 127.0.0.1 and localhost.
WEBHOOKS_ALLOWED_TARGETS = env("WEBHOOKS_ALLOWED_TARGETS", default=[], cast=list)
# DNS lookups of webhook targets (resilience.ssrf, at registration and before each
# delivery) are bounded; empty nameservers means the system resolver ("host[:port]").
DNS_RESOLVE_TIMEOUT_S = env("DNS_RESOLVE_TIMEOUT_S", default=2.0, cast=float)
DNS_NAMESERVERS = env("DNS_NAMESERVERS", default=[], cast=list)
WEBHOOKS_EVENT_TYPES = [
    "order.created",
    "order.paid",
    "order.payment_deferred",
    "order.payment_failed",
    "order.refunded",
]
WEBHOOKS_MAX_ENDPOINTS_PER_USER = env("WEBHOOKS_MAX_ENDPOINTS_PER_USER", default=20, cast=int)
# Business rule (fixed window per user, resilience.ratelimit.business): django-ratelimit
# rate syntax.
WEBHOOKS_PING_RATE = env("WEBHOOKS_PING_RATE", default="10/h")
# Retry schedule, in Postgres: attempt n+1 waits uniform(0, min(cap, base * 2**(n-1))).
# 12 attempts with these numbers spread over about 7 hours on average.
WEBHOOKS_MAX_ATTEMPTS = env("WEBHOOKS_MAX_ATTEMPTS", default=12, cast=int)
WEBHOOKS_RETRY_BASE_S = env("WEBHOOKS_RETRY_BASE_S", default=30.0, cast=float)
WEBHOOKS_RETRY_CAP_S = env("WEBHOOKS_RETRY_CAP_S", default=6 * 3600.0, cast=float)
# A receiver's Retry-After is honoured up to this.
WEBHOOKS_RETRY_AFTER_CAP_S = env("WEBHOOKS_RETRY_AFTER_CAP_S", default=3600.0, cast=float)
# Breaker open: retry when it lets a trial through, plus up to this much jitter, so the
# deliveries of a recovering host do not all arrive in the same second.
WEBHOOKS_BREAKER_JITTER_S = env("WEBHOOKS_BREAKER_JITTER_S", default=10.0, cast=float)
WEBHOOKS_BULKHEAD_RETRY_S = env("WEBHOOKS_BULKHEAD_RETRY_S", default=2.0, cast=float)
# A claimed delivery whose worker died is due again after this: above the task's hard
# time limit, so a live attempt is never taken over.
WEBHOOKS_LEASE_S = env("WEBHOOKS_LEASE_S", default=CELERY_TASK_TIME_LIMIT + 30, cast=float)
if WEBHOOKS_LEASE_S <= CELERY_TASK_TIME_LIMIT:
    raise ImproperlyConfigured("WEBHOOKS_LEASE_S must exceed CELERY_TASK_TIME_LIMIT_S.")
WEBHOOKS_SWEEP_INTERVAL_S = env("WEBHOOKS_SWEEP_INTERVAL_S", default=2.0, cast=float)
WEBHOOKS_SWEEP_BATCH = env("WEBHOOKS_SWEEP_BATCH", default=500, cast=int)
# A published delivery that no worker started after this is published again (its message
# may have been lost with a Redis that restarted empty). Duplicates are harmless: claims.
WEBHOOKS_REDISPATCH_AFTER_S = env("WEBHOOKS_REDISPATCH_AFTER_S", default=300.0, cast=float)
# After a failed publish the request path stops publishing for this long; the sweep does.
WEBHOOKS_PUBLISH_PAUSE_S = env("WEBHOOKS_PUBLISH_PAUSE_S", default=5.0, cast=float)
WEBHOOKS_USER_AGENT = "resilient-webhooks/1.0"
CELERY_BEAT_SCHEDULE |= {
    "webhooks-sweep-outbox": {
        "task": "webhooks.tasks.sweep_outbox",
        "schedule": WEBHOOKS_SWEEP_INTERVAL_S,
    },
}
# --- end of webhooks ---------------------------------------------------------------------

# The beat heartbeat (common/tasks.py): BeatNotRunning fires when it is 5 intervals old.
BEAT_HEARTBEAT_INTERVAL_S = env("BEAT_HEARTBEAT_INTERVAL_S", default=30.0, cast=float)
CELERY_BEAT_SCHEDULE |= {
    "beat-heartbeat": {
        "task": "common.tasks.beat_heartbeat",
        "schedule": BEAT_HEARTBEAT_INTERVAL_S,
    },
}
# Exactly one active beat in a fleet (resilience.beat.LockedScheduler, adr/0012): the
# holder renews this lease in Redis every third of it; a second beat stands by and takes
# over within one lease after the first dies.
BEAT_LOCK_KEY = env("BEAT_LOCK_KEY", default="resilience:beat-lock")
BEAT_LOCK_LEASE_S = env("BEAT_LOCK_LEASE_S", default=15.0, cast=float)
