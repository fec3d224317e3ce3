"""One proxy: its listener, its live connections, and how toxics act on their bytes.

Each accepted client gets a :class:`Connection` that dials the upstream and runs two
pipes, one per direction. A pipe looks up the connection's active toxics for every
chunk it forwards, so a toxic added to a proxy reaches connections that are already
open: faults land on pooled connections, which is where real outages hurt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from typing import Any

from chaos.proxy.errors import BadRequest, Conflict, NotFound, ProxyAPIError
from chaos.proxy.toxics import DOWNSTREAM, UPSTREAM, Toxic

logger = logging.getLogger("chaos.proxy")

DEFAULT_LISTEN = "127.0.0.1:0"
CHUNK_SIZE = 32 * 1024
CONNECT_TIMEOUT_S = 5.0
DROP_TIMEOUT_S = 5.0  # how long disabling a proxy waits for its connections to finish
# SO_LINGER on, 0 s: close() discards unsent data and sends RST instead of FIN.
LINGER_RESET = struct.pack("ii", 1, 0)


def parse_address(value: Any, what: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``); raise :class:`BadRequest` if malformed."""
    if not isinstance(value, str) or ":" not in value:
        raise BadRequest(f"{what} must be 'host:port', not {value!r}")
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not port.isdigit() or int(port) > 65535:
        raise BadRequest(f"{what} has an invalid port: {value!r}")
    return host, int(port)


def format_address(host: str, port: int) -> str:
    """The inverse of :func:`parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{key} must be true or false, not {value!r}")
    return value


class Proxy:
    """A named TCP listener forwarding every connection to ``upstream`` through its toxics.

    Only touched from the event loop that runs it. Construct it disabled, then call
    :meth:`enable`; ``listen`` may use port 0, after which the real port is reported and
    kept, so that disabling and enabling again re-binds the same address.
    """

    def __init__(self, name: str, listen: str, upstream: str) -> None:
        """Validate the addresses; nothing is bound until :meth:`enable`."""
        if not isinstance(name, str) or not name or "/" in name:
            raise BadRequest("proxy name must be a non-empty string without '/'")
        self.name = name
        self.configured_listen = listen
        self._host, self._port = parse_address(listen, "listen")
        self._host = self._host or "0.0.0.0"  # ":8080" means every interface, as in Go
        host, _ = parse_address(upstream, "upstream")
        if not host:
            raise BadRequest(f"upstream needs a host: {upstream!r}")
        self.upstream = upstream
        self.toxics: list[Toxic] = []
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()

    @classmethod
    def from_json(cls, body: Any) -> tuple[Proxy, bool]:
        """Validate a ``POST /proxies`` body; return the proxy and whether to enable it."""
        if not isinstance(body, dict):
            raise BadRequest("proxy must be a JSON object")
        if not body.get("name"):
            raise BadRequest("missing required field: name")
        if not body.get("upstream"):
            raise BadRequest("missing required field: upstream")
        proxy = cls(body["name"], body.get("listen") or DEFAULT_LISTEN, body["upstream"])
        return proxy, _flag(body, "enabled", default=True)

    @property
    def enabled(self) -> bool:
        """Whether the proxy is listening."""
        return self._server is not None

    @property
    def listen(self) -> str:
        """The listen address, with the real port once bound."""
        return format_address(self._host, self._port)

    def to_json(self) -> dict[str, Any]:
        """The Toxiproxy JSON representation."""
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [toxic.to_json() for toxic in self.toxics],
        }

    # -- lifecycle ---------------------------------------------------------------------

    async def enable(self) -> None:
        """Bind the listener (no-op if already listening)."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            # Bind only the first address the host resolves to: "localhost" with port 0
            # would otherwise get a different random port for IPv4 and IPv6.
            infos = await loop.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, *_, sockaddr = infos[0]
            self._server = await asyncio.start_server(
                self._accept, sockaddr[0], self._port, family=family
            )
        except OSError as exc:
            raise ProxyAPIError(
                f"proxy {self.name}: cannot listen on {self.listen}: {exc}"
            ) from exc
        self._port = self._server.sockets[0].getsockname()[1]

    async def disable(self) -> None:
        """Close the listener and drop every open connection, as Toxiproxy does."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self.drop_connections()

    async def drop_connections(self) -> None:
        """Close every open connection and wait (bounded) until they are gone."""
        tasks = [conn.task for conn in self._connections if conn.task is not None]
        for conn in list(self._connections):
            conn.kill()
        if tasks:
            await asyncio.wait(tasks, timeout=DROP_TIMEOUT_S)

    async def update(self, body: Any) -> None:
        """Apply a ``POST /proxies/{name}`` body: any of ``enabled``, ``listen``, ``upstream``."""
        if not isinstance(body, dict):
            raise BadRequest("proxy update must be a JSON object")
        enabled = _flag(body, "enabled", default=self.enabled)
        if body.get("upstream"):
            host, _ = parse_address(body["upstream"], "upstream")
            if not host:
                raise BadRequest(f"upstream needs a host: {body['upstream']!r}")
            self.upstream = body["upstream"]  # new connections only; open ones keep theirs
        listen = body.get("listen")
        if listen and listen not in (self.listen, self.configured_listen):
            host, port = parse_address(listen, "listen")
            await self.disable()
            self.configured_listen = listen
            self._host, self._port = host or "0.0.0.0", port
        if enabled:
            await self.enable()
        else:
            await self.disable()

    # -- toxics ------------------------------------------------------------------------

    def get_toxic(self, name: str) -> Toxic:
        """The toxic called ``name``; raise :class:`NotFound`."""
        for toxic in self.toxics:
            if toxic.name == name:
                return toxic
        raise NotFound(f"toxic not found: {name}")

    def add_toxic(self, toxic: Toxic) -> None:
        """Add a toxic; it applies to open connections at once."""
        if any(existing.name == toxic.name for existing in self.toxics):
            raise Conflict(f"toxic already exists: {toxic.name}")
        self.toxics.append(toxic)
        self._sync_connections()

    def replace_toxic(self, toxic: Toxic) -> None:
        """Swap in an updated toxic with the same name."""
        index = self.toxics.index(self.get_toxic(toxic.name))
        self.toxics[index] = toxic
        self._sync_connections()

    def remove_toxic(self, name: str) -> None:
        """Remove the toxic called ``name``; raise :class:`NotFound`."""
        self.toxics.remove(self.get_toxic(name))
        self._sync_connections()

    def remove_all_toxics(self) -> None:
        """Remove every toxic."""
        self.toxics.clear()
        self._sync_connections()

    def _sync_connections(self) -> None:
        for conn in list(self._connections):
            conn.sync_toxics(self.toxics)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(self, reader, writer)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)


class Connection:
    """A client connection, its upstream twin, and this connection's view of the toxics.

    Toxicity is rolled once per connection and toxic (when the connection opens, or
    when the toxic is added or updated), so a 0.5 toxic hits about half the connections
    and hits them consistently.
    """

    def __init__(
        self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Wrap an accepted client; :meth:`run` does the work."""
        self._proxy = proxy
        self._client_reader = reader
        self._client_writer = writer
        self._upstream_writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self._toxics: dict[str, tuple[Toxic, bool]] = {}  # name -> (toxic, does it apply?)
        self._timers: dict[str, asyncio.Task[None]] = {}  # name -> pending close/reset
        self._abort = False  # close without flushing: the peers must see a failure
        self._reset = False
        self._closed = False

    async def run(self) -> None:
        """Dial the upstream and pump bytes both ways until either side is done."""
        # The work runs in a task of its own that kill() cancels. The stream handler
        # task must end normally: Python 3.11 logs an error for a cancelled one.
        self.task = asyncio.create_task(self._serve())
        try:
            await asyncio.wait([self.task])
        finally:
            self._teardown()  # in case the task was cancelled before it even started
        if not self.task.cancelled() and (error := self.task.exception()) is not None:
            logger.error("proxy %s: connection crashed", self._proxy.name, exc_info=error)

    async def _serve(self) -> None:
        self.sync_toxics(self._proxy.toxics)
        try:
            host, port = parse_address(self._proxy.upstream, "upstream")
            try:
                upstream_reader, self._upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError) as exc:
                # The client must not hang on a proxy with nothing behind it.
                logger.info("proxy %s: upstream %s unreachable: %s", self._proxy.name, host, exc)
                return
            pipes = [
                asyncio.create_task(
                    self._pipe(UPSTREAM, self._client_reader, self._upstream_writer)
                ),
                asyncio.create_task(self._pipe(DOWNSTREAM, upstream_reader, self._client_writer)),
            ]
            try:
                await asyncio.gather(*pipes)
            finally:
                for pipe in pipes:
                    pipe.cancel()
        except OSError as exc:
            logger.debug("proxy %s: connection failed: %s", self._proxy.name, exc)
            self._abort = True
        finally:
            self._teardown()

    def kill(self, *, reset: bool = False) -> None:
        """Tear the connection down now; with ``reset`` the client gets a TCP RST."""
        self._abort = True
        self._reset = self._reset or reset
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def sync_toxics(self, toxics: list[Toxic]) -> None:
        """Catch up with the proxy's toxics: roll for new ones, retire removed ones."""
        if self._closed:
            return
        current = {toxic.name: toxic for toxic in toxics}
        for name, (old, applies) in list(self._toxics.items()):
            if current.get(name) is old:
                continue
            del self._toxics[name]
            if timer := self._timers.pop(name, None):
                timer.cancel()
            if name not in current and applies and old.type == "timeout":
                # Bytes were dropped while it applied, so the stream is corrupt: close it,
                # as Toxiproxy does when a timeout toxic is removed.
                self.kill()
        for toxic in toxics:
            if toxic.name in self._toxics:
                continue
            applies = random.random() < toxic.toxicity
            self._toxics[toxic.name] = (toxic, applies)
            if applies and toxic.type == "timeout" and toxic.attributes["timeout"] > 0:
                self._start_timer(toxic, reset=False)

    def _active(self, stream: str) -> list[Toxic]:
        return [t for t, applies in self._toxics.values() if applies and t.stream == stream]

    def _start_timer(self, toxic: Toxic, *, reset: bool) -> None:
        if toxic.name not in self._timers:
            delay_s = toxic.attributes["timeout"] / 1000
            self._timers[toxic.name] = asyncio.create_task(self._kill_after(delay_s, reset))

    async def _kill_after(self, delay_s: float, reset: bool) -> None:
        await asyncio.sleep(delay_s)
        self.kill(reset=reset)

    async def _pipe(
        self, stream: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(CHUNK_SIZE)
            received = loop.time()
            toxics = self._active(stream)
            types = {toxic.type for toxic in toxics}
            if not data:
                await self._end_stream(toxics, writer)
                return
            if "timeout" in types:
                continue  # a timeout toxic swallows everything
            if "reset_peer" in types:
                # Like Toxiproxy: the first chunk arms the reset, and is lost with the rest.
                for toxic in toxics:
                    if toxic.type == "reset_peer":
                        self._start_timer(toxic, reset=True)
                continue
            delay_s = sum(_latency_ms(t) for t in toxics if t.type == "latency") / 1000
            # Measured from arrival, so time spent in earlier toxics is not charged twice.
            if (wait := received + delay_s - loop.time()) > 0:
                await asyncio.sleep(wait)
            await self._write(writer, data, toxics)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes, toxics: list[Toxic]) -> None:
        rates = [t.attributes["rate"] for t in toxics if t.type == "bandwidth"]
        rates = [rate for rate in rates if rate > 0]  # rate 0 means unlimited, as in Toxiproxy
        if not rates:
            writer.write(data)
            await writer.drain()
            return
        bytes_per_s = min(rates) * 1000
        step = max(1, int(bytes_per_s / 10))  # 100 ms worth of data per write
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            await asyncio.sleep(len(piece) / bytes_per_s)
            writer.write(piece)
            await writer.drain()

    async def _end_stream(self, toxics: list[Toxic], writer: asyncio.StreamWriter) -> None:
        """Forward an EOF, late if a slow_close toxic says so."""
        if any(toxic.type == "timeout" for toxic in toxics):
            self.kill()
            return
        delays = [t.attributes["delay"] for t in toxics if t.type == "slow_close"]
        if delays:
            await asyncio.sleep(max(delays) / 1000)
        # Half-close, so a client that shuts down its sending side still gets its answer.
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()

    def _teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._reset:
            client_socket = self._client_writer.get_extra_info("socket")
            if client_socket is not None:
                with contextlib.suppress(OSError):
                    client_socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        for writer in (self._client_writer, self._upstream_writer):
            if writer is None:
                continue
            if self._abort:
                writer.transport.abort()  # drop buffered data: the point is to fail now
            else:
                writer.close()  # both sides finished: flush what is left, then FIN


def _latency_ms(toxic: Toxic) -> float:
    jitter = toxic.attributes["jitter"]
    return max(0.0, toxic.attributes["latency"] + random.uniform(-jitter, jitter))
