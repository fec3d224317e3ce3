"""Start-up check: ``RESILIENCE_RATELIMIT`` is complete, spelt right and sane.

A misspelt key (``"refil_rate"``) or a scope that does not exist would otherwise show
up as a limit that silently never applies, or as a 500 on the first request.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register
from django.core.exceptions import ImproperlyConfigured

from resilience.ratelimit.config import SETTING, build_config
from resilience.ratelimit.throttles import declared_policies


@register()
def check_ratelimit_settings(app_configs, **kwargs) -> list[Error]:
    """Validate ``RESILIENCE_RATELIMIT`` the way the limiter will read it."""
    try:
        config = build_config(getattr(settings, SETTING, {}))
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="resilience.E101")]
    return [
        Error(
            f"{SETTING} has no policy {name!r}, which a view declares.",
            hint="Add it under 'policies' (docs/configuration.md).",
            id="resilience.E102",
        )
        for name in sorted(declared_policies() - set(config.policies))
    ]
