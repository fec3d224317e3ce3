"""This project's side of the in-process comparisons: a dependency declared in settings.

``peer_dependency(url, ...)`` declares ``peers_dependency`` as a copy of the shipped
payments policy aimed at ``url`` (parts can be changed or dropped), for the length of the
block, and rebuilds the registries around it. Only the public API is used afterwards:
``resilience.breakers.breaker(name).call(func)`` and ``resilience.http.client(name)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NAME = "peers_dependency"


def fresh_name() -> str:
    """A name of the declared dependency no earlier run used (shared breaker state in
    Redis outlives a run): ``peers_dependency:<random>`` uses the declared policy."""
    import uuid

    return f"{NAME}:{uuid.uuid4().hex[:12]}"


def shipped_policy() -> dict[str, Any]:
    """The shipped payments policy, as settings declare it (a copy)."""
    from django.conf import settings

    return {
        part: dict(value) if isinstance(value, dict) else value
        for part, value in settings.RESILIENCE["dependencies"]["payments"].items()
    }


def _reset() -> None:
    from resilience.registry import reset_all

    reset_all()


@contextmanager
def peer_dependency(url: str, *, drop: tuple[str, ...] = (), **parts: dict) -> Iterator[None]:
    """Declare ``peers_dependency`` (payments' policy at ``url``) for the block."""
    from django.conf import settings
    from django.test import override_settings

    policy = {**shipped_policy(), "base_url": url}
    for part, values in parts.items():
        policy[part] = {**policy.get(part, {}), **values}
    for part in drop:
        policy.pop(part, None)
    resilience = {
        **settings.RESILIENCE,
        "dependencies": {**settings.RESILIENCE["dependencies"], NAME: policy},
    }
    with override_settings(RESILIENCE=resilience):
        _reset()
        try:
            yield
        finally:
            _reset()
