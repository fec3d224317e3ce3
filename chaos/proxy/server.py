"""The proxy server: every proxy, the control API in front of them, and how to run it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

from chaos.proxy.api import ControlAPI
from chaos.proxy.errors import BadRequest, Conflict, NotFound
from chaos.proxy.proxy import Proxy
from chaos.proxy.toxics import Toxic

logger = logging.getLogger("chaos.proxy")

DEFAULT_PORT = 8474


class ProxyServer:
    """Manages named proxies and serves the Toxiproxy control API over HTTP.

    The control operations below are what the API calls; each logs one line. They must
    run on the server's event loop: from other threads, go through the HTTP API (for
    example with :class:`chaos.toxiproxy_client.ToxiproxyClient`).

    Run it with ``await server.run()`` (as ``python -m chaos.proxy`` does) or, in
    tests, with :meth:`start_in_thread` and :meth:`stop`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        proxies: list[dict[str, Any]] | None = None,
    ) -> None:
        """Configure the control API address (port 0 picks a free one) and initial proxies."""
        self.host = host
        self.port = port
        self.proxies: dict[str, Proxy] = {}
        self._initial = proxies or []
        self._api_server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the control API."""
        return f"http://{self.host}:{self.port}"

    # -- running -----------------------------------------------------------------------

    async def start(self) -> int:
        """Create the initial proxies, then bind the control API; return its port."""
        await self.populate(self._initial)
        self._api_server = await asyncio.start_server(ControlAPI(self).handle, self.host, self.port)
        self.port = self._api_server.sockets[0].getsockname()[1]
        logger.info("control API listening on %s", self.url)
        return self.port

    async def close(self) -> None:
        """Stop the control API and every proxy, dropping their connections."""
        if self._api_server is not None:
            self._api_server.close()
            self._api_server = None
        await asyncio.gather(*(proxy.disable() for proxy in self.proxies.values()))
        self.proxies.clear()
        logger.info("proxy server stopped")

    async def run(self, on_started: Callable[[int], object] | None = None) -> None:
        """Start, serve until :meth:`request_stop` is called, then close."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            port = await self.start()
            if on_started is not None:
                on_started(port)
            await self._stop_event.wait()
        finally:
            await self.close()

    def request_stop(self) -> None:
        """Make :meth:`run` return; safe from any thread and from signal handlers."""
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)

    def start_in_thread(self, timeout: float = 10.0) -> int:
        """Run the server on its own event loop in a daemon thread; return the control port."""
        if self._thread is not None:
            raise RuntimeError("proxy server already started")
        started: concurrent.futures.Future[int] = concurrent.futures.Future()

        def target() -> None:
            try:
                asyncio.run(self.run(on_started=started.set_result))
            except BaseException as exc:
                # Hand a startup failure (say, the port is taken) to the waiting caller.
                if not started.done():
                    started.set_exception(exc)
                raise

        self._thread = threading.Thread(target=target, name="chaos-proxy", daemon=True)
        self._thread.start()
        return started.result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread` and join its thread."""
        if self._thread is None:
            return
        self.request_stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"proxy server thread did not stop within {timeout} s")
        self._thread = None

    # -- control operations ------------------------------------------------------------

    def get_proxy(self, name: str) -> Proxy:
        """The proxy called ``name``; raise :class:`NotFound`."""
        try:
            return self.proxies[name]
        except KeyError:
            raise NotFound(f"proxy not found: {name}") from None

    async def create_proxy(self, body: Any) -> Proxy:
        """Create (and by default enable) a proxy; raise :class:`Conflict` if the name is taken."""
        proxy, enabled = Proxy.from_json(body)
        if proxy.name in self.proxies:
            raise Conflict(f"proxy already exists: {proxy.name}")
        if enabled:
            await proxy.enable()
        self.proxies[proxy.name] = proxy
        logger.info(
            "created proxy %s listen=%s upstream=%s enabled=%s",
            proxy.name,
            proxy.listen,
            proxy.upstream,
            proxy.enabled,
        )
        return proxy

    async def populate(self, bodies: Any) -> list[Proxy]:
        """Create or replace each proxy of a list; unchanged ones keep their connections."""
        if not isinstance(bodies, list):
            raise BadRequest("populate expects a JSON list of proxies")
        parsed = [Proxy.from_json(body) for body in bodies]  # validate all before changing any
        names = [proxy.name for proxy, _ in parsed]
        if len(set(names)) != len(names):
            raise BadRequest("populate list has duplicate proxy names")
        result = []
        for body, (proxy, enabled) in zip(bodies, parsed, strict=True):
            existing = self.proxies.get(proxy.name)
            if existing is not None and _same_addresses(existing, proxy):
                await existing.update({"enabled": enabled})
                result.append(existing)
                continue
            if existing is not None:
                await self.delete_proxy(existing.name)
            result.append(await self.create_proxy(body))
        return result

    async def update_proxy(self, name: str, body: Any) -> Proxy:
        """Change ``enabled``, ``listen`` or ``upstream`` of a proxy."""
        proxy = self.get_proxy(name)
        await proxy.update(body)
        logger.info(
            "updated proxy %s listen=%s upstream=%s enabled=%s",
            name,
            proxy.listen,
            proxy.upstream,
            proxy.enabled,
        )
        return proxy

    async def delete_proxy(self, name: str) -> None:
        """Stop and forget a proxy."""
        proxy = self.get_proxy(name)
        await proxy.disable()
        del self.proxies[name]
        logger.info("deleted proxy %s", name)

    def add_toxic(self, proxy_name: str, body: Any) -> Toxic:
        """Add a toxic to a proxy; it applies to open connections too."""
        toxic = Toxic.from_json(body)
        self.get_proxy(proxy_name).add_toxic(toxic)
        logger.info("added toxic %s to proxy %s: %s", toxic.name, proxy_name, toxic.to_json())
        return toxic

    def update_toxic(self, proxy_name: str, toxic_name: str, body: Any) -> Toxic:
        """Change the ``toxicity`` or ``attributes`` of a toxic."""
        proxy = self.get_proxy(proxy_name)
        toxic = proxy.get_toxic(toxic_name).updated(body)
        proxy.replace_toxic(toxic)
        logger.info("updated toxic %s of proxy %s: %s", toxic.name, proxy_name, toxic.to_json())
        return toxic

    def remove_toxic(self, proxy_name: str, toxic_name: str) -> None:
        """Remove a toxic from a proxy."""
        self.get_proxy(proxy_name).remove_toxic(toxic_name)
        logger.info("removed toxic %s from proxy %s", toxic_name, proxy_name)

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        for proxy in self.proxies.values():
            proxy.remove_all_toxics()
            await proxy.enable()
        logger.info("reset: all proxies enabled, all toxics removed")


def _same_addresses(existing: Proxy, wanted: Proxy) -> bool:
    listen = wanted.configured_listen
    return existing.upstream == wanted.upstream and listen in (
        existing.listen,
        existing.configured_listen,
    )
