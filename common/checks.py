"""System checks that catch silent misconfiguration at start-up.

A misspelt setting such as ``CELERY_TASK_TIME_LIMT`` is silently ignored by Celery, which
means a worker without a time limit. These checks turn such typos into errors.
"""

from __future__ import annotations

from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS
from django.conf import settings
from django.core.checks import Error, register

# Our own settings that share the CELERY_ prefix but are not Celery's.
PROJECT_CELERY_SETTINGS = {"CELERY_BROKER_SOCKET_TIMEOUT_S"}


@register()
def check_celery_setting_names(app_configs, **kwargs) -> list[Error]:
    known = {key.lower() for key in CELERY_DEFAULTS}
    errors = []
    for name in dir(settings):
        if not name.startswith("CELERY_") or name in PROJECT_CELERY_SETTINGS:
            continue
        if name.removeprefix("CELERY_").lower() not in known:
            errors.append(
                Error(
                    f"Unknown Celery setting {name}.",
                    hint="Celery ignores unknown names silently; check the spelling.",
                    id="common.E001",
                )
            )
    return errors
