"""Settings of the worker-model benchmark's server: the test settings and one slow view."""

from config.settings.test import *  # noqa: F403

ROOT_URLCONF = "bench.worker_model_urls"
