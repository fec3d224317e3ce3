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


def _refuse_to_start_on_failed_checks() -> None:
    """A worker with settings the system checks reject stops before taking any task."""
    from celery import signals

    def check(**_: object) -> None:
        import sys

        from django.core.management.base import SystemCheckError

        from resilience.checks import refuse_to_start_on_errors

        try:
            refuse_to_start_on_errors()
        except SystemCheckError as exc:
            # Celery logs and ignores an exception from a signal handler: exit instead.
            print(exc, file=sys.stderr)
            raise SystemExit(1) from exc

    signals.worker_init.connect(check, weak=False)


_refuse_to_start_on_failed_checks()
