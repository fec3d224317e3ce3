"""Developer machine: the base settings as they are (DEBUG only when DJANGO_DEBUG is set)."""

from config.env import env
from config.settings.base import *

# The chaos rig and the benchmarks bring management commands (`manage.py chaos`,
# `manage.py loadtest`); production does not install them.
INSTALLED_APPS = [*INSTALLED_APPS, "chaos", "bench"]

# The reference receiver of `make run` listens on 127.0.0.1 (adr/0006).
WEBHOOKS_ALLOWED_TARGETS = env(
    "WEBHOOKS_ALLOWED_TARGETS", default=["127.0.0.1", "localhost"], cast=list
)
