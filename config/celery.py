"""The Celery application, configured from Django settings (namespace ``CELERY_``).

Queues, routes, serialisation, acknowledgement and time limits are all declared in
``config/settings/base.py`` so there is one place to read them.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("resilient")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _route_tasks_to_background_pool() -> None:
    """Tasks query through the ``background`` alias, never the request-path pool."""
    from celery import signals

    from resilience.db_routing import enter_background, leave_background

    signals.task_prerun.connect(enter_background, weak=False)
    signals.task_postrun.connect(leave_background, weak=False)


_route_tasks_to_background_pool()


def _observe_tasks() -> None:
    """Request ids into tasks and their logs; task and resilience metrics per worker."""
    from common import task_context, worker_metrics

    task_context.install()
    worker_metrics.install()


_observe_tasks()
