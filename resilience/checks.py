"""Start-up check: every ``RESILIENCE`` dependency policy is known, complete and safe."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register

from resilience.policies import PolicyError, build_policy

TOP_LEVEL_KEYS = {"request_deadline_s", "breaker_state_redis_url", "dependencies"}
REQUIRED_DEPENDENCIES = {"postgres", "redis", "payments", "webhook"}


@register()
def check_resilience_settings(app_configs, **kwargs) -> list[Error]:
    config = getattr(settings, "RESILIENCE", None)
    if not isinstance(config, dict):
        return [Error("settings.RESILIENCE must be a dict.", id="resilience.E001")]
    errors = [
        Error(f"Unknown RESILIENCE key {key!r}.", hint="Check the spelling.", id="resilience.E002")
        for key in sorted(set(config) - TOP_LEVEL_KEYS)
    ]
    deadline = config.get("request_deadline_s")
    if not isinstance(deadline, int | float) or not 0 < deadline <= 60:
        errors.append(
            Error(
                "RESILIENCE['request_deadline_s'] must be within (0, 60] s.", id="resilience.E003"
            )
        )
    dependencies = config.get("dependencies", {})
    errors += [
        Error(f"RESILIENCE has no policy for {name!r}.", id="resilience.E004")
        for name in sorted(REQUIRED_DEPENDENCIES - set(dependencies))
    ]
    for name, raw in dependencies.items():
        try:
            build_policy(name, raw)
        except PolicyError as exc:
            errors.append(Error(f"RESILIENCE dependency {exc}", id="resilience.E005"))
    return errors
