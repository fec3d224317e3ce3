"""Read configuration from the environment, failing loudly.

Every setting that differs between machines comes through :func:`env`. A malformed
value raises ``ImproperlyConfigured`` at start-up instead of silently falling back, so
a typo in a deployment is found by the first process that starts, not by the first
customer who hits the code path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")

_MISSING = object()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _to_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")


def _to_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


CASTS: dict[type, Callable[[str], Any]] = {bool: _to_bool, list: _to_list, int: int, float: float}


def env(name: str, default: Any = _MISSING, cast: type[T] = str) -> T:
    """Return environment variable ``name`` converted by ``cast``.

    Without a default the variable is required. A value that ``cast`` rejects is a
    configuration error, never silently replaced by the default.
    """
    raw = os.environ.get(name)
    if raw is None:
        if default is _MISSING:
            raise ImproperlyConfigured(f"Set the {name} environment variable.")
        return default
    converter = CASTS.get(cast, cast)
    try:
        return converter(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a valid {cast.__name__}: {exc}") from exc
