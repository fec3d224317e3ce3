"""The HTTP control API: a minimal HTTP/1.1 server mapping Toxiproxy's routes to operations.

One request per connection (answers carry ``Connection: close``), JSON in and out,
errors as ``{"error": "...", "status": N}``. It is a control plane for tests and
experiments on a trusted host, not a general web server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from chaos.proxy.errors import BadRequest, NotFound, ProxyAPIError

if TYPE_CHECKING:
    from chaos.proxy.server import ProxyServer

logger = logging.getLogger("chaos.proxy")

VERSION = "0.1.0"
READ_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 1024 * 1024
MAX_HEADERS = 100


@dataclass
class Request:
    """A parsed request; ``params`` are the ``*`` parts of the matched route."""

    method: str
    path: str
    body: bytes
    params: tuple[str, ...] = ()

    def json(self) -> Any:
        """The body decoded as JSON; raise :class:`BadRequest` if it is not."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from exc


Response = tuple[int, Any]  # status, JSON-able payload (None for no body)
Handler = Callable[[Request], Awaitable[Response]]


class ControlAPI:
    """Routes requests to a :class:`~chaos.proxy.server.ProxyServer`."""

    def __init__(self, server: ProxyServer) -> None:
        """Build the route table; ``*`` in a route matches one path segment."""
        self._server = server
        self._routes: list[tuple[str, tuple[str, ...], Handler]] = [
            ("GET", ("version",), self.version),
            ("POST", ("reset",), self.reset),
            ("POST", ("populate",), self.populate),
            ("GET", ("proxies",), self.list_proxies),
            ("POST", ("proxies",), self.create_proxy),
            ("GET", ("proxies", "*"), self.get_proxy),
            ("POST", ("proxies", "*"), self.update_proxy),
            ("PATCH", ("proxies", "*"), self.update_proxy),
            ("DELETE", ("proxies", "*"), self.delete_proxy),
            ("GET", ("proxies", "*", "toxics"), self.list_toxics),
            ("POST", ("proxies", "*", "toxics"), self.create_toxic),
            ("GET", ("proxies", "*", "toxics", "*"), self.get_toxic),
            ("POST", ("proxies", "*", "toxics", "*"), self.update_toxic),
            ("PATCH", ("proxies", "*", "toxics", "*"), self.update_toxic),
            ("DELETE", ("proxies", "*", "toxics", "*"), self.delete_toxic),
        ]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one request on a fresh connection (an ``asyncio.start_server`` callback)."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                request = await _read_request(reader)
            if request is not None:
                writer.write(_render(*await self._respond(request)))
                await writer.drain()
        except ProxyAPIError as exc:  # an unparsable request
            writer.write(_render(exc.status, {"error": str(exc), "status": exc.status}))
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            logger.debug("control API connection dropped: %s", exc)
        finally:
            writer.close()

    async def _respond(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except ProxyAPIError as exc:
            return exc.status, {"error": str(exc), "status": exc.status}
        except Exception as exc:
            # A bug must not take the control plane down with it: answer 500, keep serving.
            logger.exception("control API failed on %s %s", request.method, request.path)
            return 500, {"error": f"internal error: {exc}", "status": 500}

    async def _dispatch(self, request: Request) -> Response:
        parts = tuple(unquote(part) for part in request.path.strip("/").split("/") if part)
        for method, pattern, handler in self._routes:
            if method == request.method and _matches(pattern, parts):
                params = tuple(p for p, want in zip(parts, pattern, strict=True) if want == "*")
                request.params = params
                return await handler(request)
        raise NotFound(f"no route for {request.method} {request.path}")

    # -- handlers ----------------------------------------------------------------------

    async def version(self, _request: Request) -> Response:
        """``GET /version``."""
        return 200, {"version": VERSION}

    async def reset(self, _request: Request) -> Response:
        """``POST /reset``: enable all proxies, remove all toxics."""
        await self._server.reset()
        return 204, None

    async def populate(self, request: Request) -> Response:
        """``POST /populate``: create or replace a list of proxies."""
        proxies = await self._server.populate(request.json())
        return 201, {"proxies": [proxy.to_json() for proxy in proxies]}

    async def list_proxies(self, _request: Request) -> Response:
        """``GET /proxies``: name -> proxy."""
        return 200, {name: proxy.to_json() for name, proxy in self._server.proxies.items()}

    async def create_proxy(self, request: Request) -> Response:
        """``POST /proxies``."""
        proxy = await self._server.create_proxy(request.json())
        return 201, proxy.to_json()

    async def get_proxy(self, request: Request) -> Response:
        """``GET /proxies/{name}``."""
        return 200, self._server.get_proxy(request.params[0]).to_json()

    async def update_proxy(self, request: Request) -> Response:
        """``POST /proxies/{name}``: change enabled, listen or upstream."""
        proxy = await self._server.update_proxy(request.params[0], request.json())
        return 200, proxy.to_json()

    async def delete_proxy(self, request: Request) -> Response:
        """``DELETE /proxies/{name}``."""
        await self._server.delete_proxy(request.params[0])
        return 204, None

    async def list_toxics(self, request: Request) -> Response:
        """``GET /proxies/{name}/toxics``."""
        proxy = self._server.get_proxy(request.params[0])
        return 200, [toxic.to_json() for toxic in proxy.toxics]

    async def create_toxic(self, request: Request) -> Response:
        """``POST /proxies/{name}/toxics`` (200, as Toxiproxy answers)."""
        toxic = self._server.add_toxic(request.params[0], request.json())
        return 200, toxic.to_json()

    async def get_toxic(self, request: Request) -> Response:
        """``GET /proxies/{name}/toxics/{toxic}``."""
        proxy_name, toxic_name = request.params
        return 200, self._server.get_proxy(proxy_name).get_toxic(toxic_name).to_json()

    async def update_toxic(self, request: Request) -> Response:
        """``POST /proxies/{name}/toxics/{toxic}``: change toxicity or attributes."""
        proxy_name, toxic_name = request.params
        toxic = self._server.update_toxic(proxy_name, toxic_name, request.json())
        return 200, toxic.to_json()

    async def delete_toxic(self, request: Request) -> Response:
        """``DELETE /proxies/{name}/toxics/{toxic}``."""
        self._server.remove_toxic(*request.params)
        return 204, None


def _matches(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    return len(pattern) == len(parts) and all(
        want in ("*", part) for want, part in zip(pattern, parts, strict=True)
    )


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request; None if the client closed without sending one."""
    line = await reader.readline()
    if not line:
        return None
    try:
        method, target, _version = line.decode("latin-1").split()
    except ValueError:
        raise BadRequest("malformed request line") from None
    length = 0
    for _ in range(MAX_HEADERS):
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                raise BadRequest("invalid Content-Length")
            length = int(value)
    else:
        raise BadRequest("too many headers")
    if length > MAX_BODY_BYTES:
        raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes")
    body = await reader.readexactly(length) if length else b""
    return Request(method.upper(), urlsplit(target).path, body)


def _render(status: int, payload: Any) -> bytes:
    body = b"" if payload is None else json.dumps(payload).encode() + b"\n"
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if body:
        head.append("Content-Type: application/json")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
