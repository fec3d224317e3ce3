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
def check_broker_socket_timeout(app_configs, **kwargs) -> list[Error]:
    """The broker's socket timeout must exceed kombu's BRPOP wait (1 s by default).

    Otherwise every idle poll times out, the worker believes the connection is lost, and
    kombu 5.7 can crash on the reconnect path (seen in a run).
    """
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})
    socket_timeout = options.get("socket_timeout")
    brpop_timeout = options.get("brpop_timeout", 1)
    if socket_timeout is None or socket_timeout <= brpop_timeout:
        return [
            Error(
                f"CELERY_BROKER_TRANSPORT_OPTIONS socket_timeout ({socket_timeout}) must be set "
                f"and above brpop_timeout ({brpop_timeout} s).",
                hint="Set CELERY_BROKER_SOCKET_TIMEOUT_S to 2 or more.",
                id="common.E002",
            )
        ]
    return []


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


@register()
def check_metrics_allowed_networks(app_configs, **kwargs) -> list[Error]:
    """``METRICS_ALLOWED_NETWORKS`` is unset or a list of CIDRs (a typo must not 500)."""
    import ipaddress

    networks = getattr(settings, "METRICS_ALLOWED_NETWORKS", None)
    if networks is None:
        return []
    errors = []
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            errors.append(
                Error(
                    f"METRICS_ALLOWED_NETWORKS: {network!r} is not an IP network.",
                    hint="Use CIDRs such as 10.0.0.0/8,127.0.0.1/32.",
                    id="common.E003",
                )
            )
    return errors
