"""Settings shared by every environment.

Every number that shapes behaviour under load or failure (timeouts, pool sizes, limits,
retry counts) is defined here, read from the environment with a documented default, and
listed in the configuration table of ``README.md``. Resilience numbers per dependency
live in ``RESILIENCE`` (see ``docs/timeouts.md``).
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
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
    "django.contrib.admin",
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

# --- PostgreSQL: two aliases on one database, each its own pool (a bulkhead) -------------
# `default` serves the request path, `background` serves Celery workers, so a flood of
# background work can exhaust only its own connections. See adr/0002.
DATABASE_URL = env("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/resilient")

DB_CONNECT_TIMEOUT_S = env("DB_CONNECT_TIMEOUT_S", default=2, cast=int)  # libpq minimum is 2
DB_REQUEST_POOL_MIN = env("DB_REQUEST_POOL_MIN", default=2, cast=int)
DB_REQUEST_POOL_MAX = env("DB_REQUEST_POOL_MAX", default=8, cast=int)
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
DB_LOCK_TIMEOUT_MS = env("DB_LOCK_TIMEOUT_MS", default=1000, cast=int)
DB_IDLE_IN_TRANSACTION_TIMEOUT_MS = env("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", default=5000, cast=int)
# Migrations run without a statement timeout but with a short lock timeout, so a schema
# change never queues behind a long transaction while blocking every query behind it.
DB_MIGRATION_LOCK_TIMEOUT_MS = env("DB_MIGRATION_LOCK_TIMEOUT_MS", default=5000, cast=int)


def database_alias(
    *,
    application_name: str,
    pool_min: int,
    pool_max: int,
    pool_timeout_s: float,
    pool_max_waiting: int,
    statement_timeout_ms: int,
) -> dict:
    """Build one alias of ``DATABASES`` with its own pool and server-side timeouts.

    The timeouts travel in the libpq startup packet (``options``), so they cost no extra
    round trip per checkout. ``application_name`` shows the alias in ``pg_stat_activity``.
    """
    config = dj_database_url.parse(DATABASE_URL)
    config.update(
        {
            "CONN_MAX_AGE": 0,  # required with a pool: the pool owns connection lifetime
            "CONN_HEALTH_CHECKS": True,  # never hand out a connection killed by a restart
            "OPTIONS": {
                "pool": {
                    "min_size": pool_min,
                    "max_size": pool_max,
                    "timeout": pool_timeout_s,
                    "max_waiting": pool_max_waiting,
                },
                "connect_timeout": DB_CONNECT_TIMEOUT_S,
                "application_name": application_name,
                "options": (
                    f"-c statement_timeout={statement_timeout_ms}"
                    f" -c lock_timeout={DB_LOCK_TIMEOUT_MS}"
                    f" -c idle_in_transaction_session_timeout={DB_IDLE_IN_TRANSACTION_TIMEOUT_MS}"
                ),
            },
        }
    )
    return config


DATABASES = {
    "default": database_alias(
        application_name="resilient-web",
        pool_min=DB_REQUEST_POOL_MIN,
        pool_max=DB_REQUEST_POOL_MAX,
        pool_timeout_s=DB_REQUEST_POOL_TIMEOUT_S,
        pool_max_waiting=DB_REQUEST_POOL_MAX_WAITING,
        statement_timeout_ms=DB_REQUEST_STATEMENT_TIMEOUT_MS,
    ),
    "background": database_alias(
        application_name="resilient-background",
        pool_min=DB_BACKGROUND_POOL_MIN,
        pool_max=DB_BACKGROUND_POOL_MAX,
        pool_timeout_s=DB_BACKGROUND_POOL_TIMEOUT_S,
        pool_max_waiting=DB_BACKGROUND_POOL_MAX_WAITING,
        statement_timeout_ms=DB_BACKGROUND_STATEMENT_TIMEOUT_MS,
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
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
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
CELERY_TASK_ROUTES = {"webhooks.tasks.*": {"queue": "webhooks"}}
ACCOUNTS_TOKEN_PURGE_INTERVAL_S = env("ACCOUNTS_TOKEN_PURGE_INTERVAL_S", default=3600, cast=int)
CELERY_BEAT_SCHEDULE = {
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
# Dependencies whose failure makes /readyz answer 503; the others only degrade service.
HEALTH_CRITICAL_DEPENDENCIES = env("HEALTH_CRITICAL_DEPENDENCIES", default=["postgres"], cast=list)
ACCOUNTS_TOKEN_TTL_S = env("ACCOUNTS_TOKEN_TTL_S", default=7 * 24 * 3600, cast=int)
ORDERS_CURRENCIES = ["EUR", "USD", "GBP", "CHF", "JPY", "SEK"]
ORDERS_MAX_ITEMS = 100
ORDERS_MAX_QUANTITY = 10_000
ORDERS_MAX_UNIT_PRICE = 100_000_000  # minor units
ORDERS_REPORT_MAX_DAYS = 366

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ExpiringTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "common.pagination.BoundedPageNumberPagination",
    "PAGE_SIZE": API_PAGE_SIZE,
    "EXCEPTION_HANDLER": "common.exception_handler.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Resilient backend API",
    "DESCRIPTION": (
        "Accounts, orders and webhooks. Errors are RFC 9457 problem+json documents with a "
        "stable `code`. 429 and 503 carry `Retry-After`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Metrics ----------------------------------------------------------------------------
PROMETHEUS_EXPORT_MIGRATIONS = False

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
