"""The test suite: the real Postgres and Redis, isolated per run.

Each run may pick its own database (``DATABASE_URL``; pytest-django prefixes the name
with ``test_``) and Redis database (``REDIS_URL``, default db 15 so a running `make run`
stack on db 0 never consumes the suite's tasks).
"""

import os
import uuid

os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")

from config.env import env
from config.settings.base import *

# The chaos rig and the benchmarks bring management commands (`manage.py chaos`,
# `manage.py loadtest`); production does not install them.
INSTALLED_APPS = [*INSTALLED_APPS, "chaos", "bench"]

DEBUG = False
# Fast hashing: the suite creates many users; production keeps the default hasher.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# One cache namespace per test run (shared with the run's subprocesses through the
# environment), so nothing cached by an earlier run is ever read back.
CACHES["default"]["KEY_PREFIX"] = "test-" + os.environ.setdefault(
    "TEST_RUN_ID", uuid.uuid4().hex[:12]
)
# Tests do not run collectstatic; serve assets without the manifest.
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"
# Test receivers run on 127.0.0.1 (and [::1] stays refused: tests/test_webhooks_ssrf.py).
# The contract test adds the host of the schema's example URL, so its endpoints exist.
WEBHOOKS_ALLOWED_TARGETS = env(
    "WEBHOOKS_ALLOWED_TARGETS", default=["127.0.0.1", "localhost"], cast=list
)
