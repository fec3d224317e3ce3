"""The current request id, carried in a contextvar so logs and tasks can read it."""

from __future__ import annotations

import contextvars
import re
import uuid

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Accept a caller's id only when it is short and harmless in logs and headers.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current_request_id() -> str | None:
    """Return the id of the request (or task) being served, if any."""
    return _request_id.get()


def bind_request_id(candidate: str | None) -> tuple[str, contextvars.Token]:
    """Bind ``candidate`` if it is a valid id, else a new one; return it and a reset token."""
    request_id = candidate if candidate and _VALID_REQUEST_ID.match(candidate) else uuid.uuid4().hex
    return request_id, _request_id.set(request_id)


def reset_request_id(token: contextvars.Token) -> None:
    """Restore the id bound before :func:`bind_request_id`."""
    _request_id.reset(token)


def clear_request_id(**_: object) -> None:
    """``request_finished`` handler: nothing after the response carries its id."""
    _request_id.set(None)
