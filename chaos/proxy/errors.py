"""Errors raised by the proxy model, each carrying the HTTP status the control API answers."""

from __future__ import annotations


class ProxyAPIError(Exception):
    """Base class: a request the control API must refuse with ``status``."""

    status = 500


class BadRequest(ProxyAPIError):
    """The request body or a field in it is invalid."""

    status = 400


class NotFound(ProxyAPIError):
    """The named proxy or toxic does not exist."""

    status = 404


class Conflict(ProxyAPIError):
    """A proxy or toxic with that name already exists."""

    status = 409
