"""The request id follows a request into the Celery tasks it publishes.

At publish (``before_task_publish``) the current request id goes into the message
headers; in the worker (``task_prerun``) it is bound for the run, so every log line of
the task, and the ``X-Request-ID`` of every outbound call it makes
(``resilience.http``), carries the id of the request that caused it. A task published
by a task (a retry, the outbox relay) passes its id on the same way. A task with no id
(published by beat or a shell) gets a fresh one per run, so its lines still group.
"""

from __future__ import annotations

import contextvars
from typing import Any

from celery import signals

from resilience.request_id import (
    bind_request_id,
    clear_request_id,
    current_request_id,
    reset_request_id,
)

HEADER = "request_id"

_tokens: dict[str, contextvars.Token] = {}


def add_request_id_header(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: copy the bound request id into the message headers."""
    request_id = current_request_id()
    if headers is not None and request_id and not headers.get(HEADER):
        headers[HEADER] = request_id


def bind_task_request_id(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """``task_prerun``: bind the publisher's id (or a fresh one) for this run."""
    # Custom message headers become attributes of ``task.request`` (Celery protocol 2).
    candidate = getattr(getattr(task, "request", None), HEADER, None)
    _, token = bind_request_id(candidate)
    if task_id:
        _tokens[task_id] = token


def unbind_task_request_id(task_id: str | None = None, **_: Any) -> None:
    """``task_postrun``: restore what was bound before the run."""
    token = _tokens.pop(task_id, None) if task_id else None
    if token is not None:
        try:
            reset_request_id(token)
        except ValueError:  # created in another context: clear rather than leak it
            clear_request_id()


def install() -> None:
    """Connect the handlers."""
    signals.before_task_publish.connect(add_request_id_header, weak=False)
    signals.task_prerun.connect(bind_task_request_id, weak=False)
    signals.task_postrun.connect(unbind_task_request_id, weak=False)
