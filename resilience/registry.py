"""Reset every per-process registry when the settings they were built from change."""

from __future__ import annotations

from typing import Any


def reset_all() -> None:
    """Forget built policies, breakers, budgets, bulkheads and clients of this process."""
    from resilience import breakers, bulkhead, concurrency, http, policies, retry

    policies.reset_policies()
    breakers.reset_registry()
    bulkhead.reset_bulkheads()
    retry.reset_budgets()
    http.reset_clients()
    concurrency.reset()


def on_setting_changed(setting: str, **_: Any) -> None:
    """``setting_changed`` receiver: tests that override RESILIENCE get fresh objects."""
    if setting in {"RESILIENCE", "RESILIENCE_ENABLED", "RESILIENCE_CONCURRENCY"}:
        reset_all()
