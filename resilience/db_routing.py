"""Route each workload to its own database alias, so each has its own connection pool.

Web requests use ``default``; Celery tasks use ``background`` (switched on by the task
signals connected in ``config/celery.py``). Because the two pools are separate, a burst
of background work can exhaust only ``background`` and never starves the request path
(adr/0002).

Routers do not cover ``transaction.atomic()``, which defaults to ``default``: services
that may run in a worker open their transactions with ``atomic(using=current_alias())``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

REQUEST_ALIAS = "default"
BACKGROUND_ALIAS = "background"
_ALIASES = {REQUEST_ALIAS, BACKGROUND_ALIAS}

_current_alias: contextvars.ContextVar[str] = contextvars.ContextVar(
    "db_alias", default=REQUEST_ALIAS
)


def current_alias() -> str:
    """The alias serving the code running now (``default`` unless inside a task)."""
    return _current_alias.get()


@contextmanager
def using_alias(alias: str) -> Iterator[str]:
    """Route every query in the block to ``alias``."""
    if alias not in _ALIASES:
        raise ValueError(f"unknown database alias {alias!r}")
    token = _current_alias.set(alias)
    try:
        yield alias
    finally:
        _current_alias.reset(token)


_task_tokens: dict[str, contextvars.Token] = {}


def enter_background(task_id: str | None = None, **_: Any) -> None:
    """Celery ``task_prerun`` handler: the task's queries go to ``background``."""
    _task_tokens[task_id or ""] = _current_alias.set(BACKGROUND_ALIAS)


def leave_background(task_id: str | None = None, **_: Any) -> None:
    """Celery ``task_postrun`` handler: restore the alias bound before the task."""
    token = _task_tokens.pop(task_id or "", None)
    if token is not None:
        _current_alias.reset(token)


class WorkloadRouter:
    """Send reads and writes to the alias of the current workload."""

    def db_for_read(self, model: type, **hints: Any) -> str:
        return _current_alias.get()

    def db_for_write(self, model: type, **hints: Any) -> str:
        return _current_alias.get()

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        # Both aliases are the same database: objects loaded through one may reference
        # objects loaded through the other.
        if {obj1._state.db, obj2._state.db} <= _ALIASES:
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db == REQUEST_ALIAS
