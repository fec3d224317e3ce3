from typing import Any

from django.apps import AppConfig


def _reset_clients(setting: str, **_: Any) -> None:
    """Tests that change the allowlist get clients built with the new SSRF guard."""
    if setting == "WEBHOOKS_ALLOWED_TARGETS":
        from resilience import registry

        registry.forget(registry.CLIENT)


class WebhooksConfig(AppConfig):
    name = "webhooks"

    def ready(self) -> None:
        from django.core.signals import request_started, setting_changed

        from webhooks.metrics import on_request_started

        request_started.connect(on_request_started, dispatch_uid="webhooks-gauges")
        setting_changed.connect(_reset_clients, dispatch_uid="webhooks-reset-clients")
