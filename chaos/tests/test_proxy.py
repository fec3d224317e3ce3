"""The Toxiproxy-compatible fault proxy, driven through its HTTP client.

Everything binds to 127.0.0.1 port 0 (or a port held by this test), timing asserts are
lower bounds only, and every socket read has a timeout, so a broken proxy fails a test
instead of hanging it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chaos.proxy import ProxyServer
from chaos.toxiproxy_client import ToxiproxyClient, ToxiproxyError

IO_TIMEOUT_S = 5.0  # only ever reached when something is broken
LATENCY_MS = 300
ROOT = Path(__file__).resolve().parents[2]


class EchoServer:
    """A threaded TCP echo server on a free loopback port, standing in for an upstream."""

    def __init__(self) -> None:
        """Listen and start accepting in a background thread."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # lets the accept loop notice close()
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            with self._lock:
                self._connections.append(conn)
                self._threads.append(thread)
            thread.start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)
            # The peer is done sending: half-close so it sees the end of the echo.
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop accepting, end every connection and join every thread."""
        self._stopping.set()
        self._acceptor.join(IO_TIMEOUT_S)
        self._listener.close()
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv()
        for thread in threads:
            thread.join(IO_TIMEOUT_S)
        for conn in connections:
            conn.close()


# -- fixtures and helpers --------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ProxyServer]:
    server = ProxyServer(host="127.0.0.1", port=0)
    server.start_in_thread()
    yield server
    server.stop()


@pytest.fixture
def client(server: ProxyServer) -> ToxiproxyClient:
    return ToxiproxyClient(server.url, timeout=IO_TIMEOUT_S)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    echo = EchoServer()
    yield echo
    echo.close()


@pytest.fixture
def proxy_port(client: ToxiproxyClient, echo: EchoServer) -> int:
    """Port of a proxy called "echo" in front of the echo server."""
    return port_of(client.create_proxy("echo", "127.0.0.1:0", f"127.0.0.1:{echo.port}"))


def port_of(proxy: dict) -> int:
    return int(proxy["listen"].rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, received = [], 0
    while received < size:  # bounded: every pass gets at least one byte or raises
        chunk = sock.recv(size - received)
        if not chunk:
            raise ConnectionError(f"closed after {received} of {size} bytes")
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    """Send ``payload``, read the echo back, return the seconds it took."""
    started = time.monotonic()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - started


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the peer closed (FIN or RST); a read timeout fails the test instead."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def raw_request(url: str, method: str, body: bytes | None = None) -> tuple[int, dict]:
    """An HTTP call without the client, to check status codes and error bodies."""
    request = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - local URL
    try:
        with urllib.request.urlopen(request, timeout=IO_TIMEOUT_S) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


# -- control API -----------------------------------------------------------------------


def test_version_and_empty_listing(client: ToxiproxyClient) -> None:
    assert client.version()
    assert client.proxies() == {}


def test_create_proxy_reports_the_bound_port(client: ToxiproxyClient, echo: EchoServer) -> None:
    proxy = client.create_proxy("echo", "127.0.0.1:0", f"127.0.0.1:{echo.port}")

    assert port_of(proxy) > 0
    assert proxy == {
        "name": "echo",
        "listen": f"127.0.0.1:{port_of(proxy)}",
        "upstream": f"127.0.0.1:{echo.port}",
        "enabled": True,
        "toxics": [],
    }
    assert client.get_proxy("echo") == proxy
    assert client.proxies() == {"echo": proxy}


def test_error_statuses_and_bodies(server: ProxyServer, client: ToxiproxyClient) -> None:
    client.create_proxy("db", "127.0.0.1:0", "127.0.0.1:9")
    client.add_toxic("db", "latency", {"latency": 10})
    expected = {
        404: [
            lambda: client.get_proxy("missing"),
            lambda: client.delete_proxy("missing"),
            lambda: client.add_toxic("missing", "latency"),
            lambda: client.remove_toxic("db", "missing"),
        ],
        409: [
            lambda: client.create_proxy("db", "127.0.0.1:0", "127.0.0.1:9"),
            lambda: client.add_toxic("db", "latency", {"latency": 20}),
        ],
        400: [
            lambda: client.create_proxy("bad", "127.0.0.1:0", "no-port"),
            lambda: client.add_toxic("db", "explode"),
            lambda: client.add_toxic("db", "latency", stream="sideways"),
            lambda: client.add_toxic("db", "latency", toxicity=1.5),
            lambda: client.add_toxic("db", "latency", {"latency": -1}, name="neg"),
            lambda: client.add_toxic("db", "latency", {"latancy": 1}, name="typo"),
            lambda: client.populate([{"name": "x"}]),
        ],
    }
    for status, calls in expected.items():
        for call in calls:
            with pytest.raises(ToxiproxyError) as caught:
                call()
            assert caught.value.status == status, caught.value

    status, body = raw_request(f"{server.url}/proxies", "POST", b"{not json")
    assert (status, body["status"]) == (400, 400)
    assert "JSON" in body["error"]
    status, body = raw_request(f"{server.url}/nowhere", "GET")
    assert (status, body["status"]) == (404, 404)


def test_populate_creates_then_replaces_only_what_changed(
    client: ToxiproxyClient, echo: EchoServer
) -> None:
    upstream = f"127.0.0.1:{echo.port}"
    first = client.populate(
        [
            {"name": "a", "listen": "127.0.0.1:0", "upstream": upstream},
            {"name": "b", "listen": "127.0.0.1:0", "upstream": upstream, "enabled": False},
        ]
    )
    assert [(p["name"], p["enabled"]) for p in first] == [("a", True), ("b", False)]

    second = client.populate(
        [
            {"name": "a", "listen": "127.0.0.1:0", "upstream": upstream},
            {"name": "b", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
        ]
    )
    assert second[0]["listen"] == first[0]["listen"]  # unchanged: kept as it was
    assert second[1]["upstream"] == "127.0.0.1:9"
    assert second[1]["enabled"] is True
    assert sorted(client.proxies()) == ["a", "b"]


def test_update_and_read_back_a_toxic(client: ToxiproxyClient, proxy_port: int) -> None:
    toxic = client.add_toxic("echo", "latency", {"latency": 0, "jitter": 0})
    assert toxic == {
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
        "attributes": {"latency": 0, "jitter": 0},
    }
    with connect(proxy_port) as sock:
        round_trip(sock)
        updated = client.update_toxic("echo", "latency_downstream", {"latency": LATENCY_MS})

        assert updated["attributes"] == {"latency": LATENCY_MS, "jitter": 0}
        assert client.get_toxic("echo", "latency_downstream") == updated
        assert client.toxics("echo") == [updated]
        assert round_trip(sock) >= LATENCY_MS / 1000 * 0.95


# -- data path and toxics --------------------------------------------------------------


def test_bytes_pass_through_unchanged_both_ways(proxy_port: int) -> None:
    payload = os.urandom(256 * 1024)
    with connect(proxy_port) as sock:
        for start in range(0, len(payload), 16 * 1024):
            round_trip(sock, payload[start : start + 16 * 1024])


@pytest.mark.parametrize("stream", ["upstream", "downstream"])
def test_latency_delays_the_stream(client: ToxiproxyClient, proxy_port: int, stream: str) -> None:
    toxic = client.add_toxic("echo", "latency", {"latency": LATENCY_MS}, stream=stream)
    assert toxic["name"] == f"latency_{stream}"

    with connect(proxy_port) as sock:
        assert round_trip(sock) >= LATENCY_MS / 1000 * 0.95


def test_toxics_reach_connections_that_are_already_open(
    client: ToxiproxyClient, proxy_port: int
) -> None:
    with connect(proxy_port) as sock:
        round_trip(sock)  # the connection is established and idle, as in a pool

        client.add_toxic("echo", "latency", {"latency": LATENCY_MS})
        assert round_trip(sock) >= LATENCY_MS / 1000 * 0.95

        client.remove_toxic("echo", "latency_downstream")
        client.add_toxic("echo", "reset_peer", {"timeout": 0})
        with pytest.raises(ConnectionResetError):
            round_trip(sock)


def test_timeout_zero_blackholes_until_removed(client: ToxiproxyClient, proxy_port: int) -> None:
    with connect(proxy_port) as sock:
        round_trip(sock)
        client.add_toxic("echo", "timeout", {"timeout": 0})

        sock.settimeout(0.3)
        sock.sendall(b"ping")
        with pytest.raises(TimeoutError):
            sock.recv(1024)

        # Its data is lost, so removing the toxic closes the connection, as in Toxiproxy.
        client.remove_toxic("echo", "timeout_downstream")
        sock.settimeout(IO_TIMEOUT_S)
        assert closed_by_peer(sock)

    with connect(proxy_port) as fresh:
        round_trip(fresh)


def test_timeout_closes_the_connection_after_the_delay(
    client: ToxiproxyClient, proxy_port: int
) -> None:
    client.add_toxic("echo", "timeout", {"timeout": 200})
    started = time.monotonic()
    with connect(proxy_port) as sock:
        sock.sendall(b"ping")
        assert closed_by_peer(sock)  # nothing comes back, then the close
    assert time.monotonic() - started >= 0.19


def test_reset_peer_sends_rst(client: ToxiproxyClient, proxy_port: int) -> None:
    client.add_toxic("echo", "reset_peer", {"timeout": 100})
    with connect(proxy_port) as sock:
        started = time.monotonic()
        with pytest.raises(ConnectionResetError):
            round_trip(sock)
        assert time.monotonic() - started >= 0.09


def test_bandwidth_limits_throughput(client: ToxiproxyClient, proxy_port: int) -> None:
    client.add_toxic("echo", "bandwidth", {"rate": 100})  # KB/s
    with connect(proxy_port) as sock:
        assert round_trip(sock, os.urandom(50_000)) >= 0.45  # 50 KB at 100 KB/s: 0.5 s


def test_slow_close_delays_the_close(client: ToxiproxyClient, proxy_port: int) -> None:
    client.add_toxic("echo", "slow_close", {"delay": LATENCY_MS})
    with connect(proxy_port) as sock:
        sock.sendall(b"ping")
        started = time.monotonic()
        sock.shutdown(socket.SHUT_WR)  # the echo server closes once it has answered
        assert recv_exactly(sock, 4) == b"ping"
        assert sock.recv(1024) == b""
        assert time.monotonic() - started >= LATENCY_MS / 1000 * 0.95


def test_toxicity_zero_never_applies(client: ToxiproxyClient, proxy_port: int) -> None:
    client.add_toxic("echo", "timeout", {"timeout": 0}, toxicity=0.0)
    client.add_toxic("echo", "reset_peer", {"timeout": 0}, stream="upstream", toxicity=0.0)
    for _ in range(20):
        with connect(proxy_port) as sock:
            sock.settimeout(2.0)
            round_trip(sock)


def test_unreachable_upstream_closes_the_client(client: ToxiproxyClient) -> None:
    # A bound socket that never listens: connecting to it is refused, and no one else
    # can take the port while we hold it.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        upstream = f"127.0.0.1:{holder.getsockname()[1]}"
        port = port_of(client.create_proxy("dead", "127.0.0.1:0", upstream))
        with connect(port) as sock:
            assert closed_by_peer(sock)


# -- enable, disable, delete, reset ----------------------------------------------------


def test_disable_drops_connections_and_refuses_new_ones(
    client: ToxiproxyClient, proxy_port: int
) -> None:
    with connect(proxy_port) as sock:
        round_trip(sock)

        assert client.set_enabled("echo", False)["enabled"] is False
        assert closed_by_peer(sock)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy_port)

    proxy = client.set_enabled("echo", True)
    assert port_of(proxy) == proxy_port  # re-bound on the same port
    with connect(proxy_port) as sock:
        round_trip(sock)


def test_delete_drops_connections(client: ToxiproxyClient, proxy_port: int) -> None:
    with connect(proxy_port) as sock:
        round_trip(sock)
        client.delete_proxy("echo")
        assert closed_by_peer(sock)
    assert client.proxies() == {}
    with pytest.raises(ConnectionRefusedError):
        connect(proxy_port)


def test_reset_enables_everything_and_removes_all_toxics(
    client: ToxiproxyClient, proxy_port: int
) -> None:
    client.add_toxic("echo", "latency", {"latency": 5000})
    client.add_toxic("echo", "timeout", {"timeout": 0}, stream="upstream")
    client.set_enabled("echo", False)

    client.reset()

    proxy = client.get_proxy("echo")
    assert (proxy["enabled"], proxy["toxics"]) == (True, [])
    with connect(proxy_port) as sock:
        round_trip(sock)


# -- end to end ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def redis_ping(port: int) -> bytes:
    with connect(port) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return recv_exactly(sock, 7)


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    """A throwaway redis-server of our own; the shared one on 6379 is never touched."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def ready() -> bool:
            assert process.poll() is None, "redis-server exited; port taken?"
            try:
                return redis_ping(port) == b"+PONG\r\n"
            except OSError:
                return False

        wait_until(ready)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(IO_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(IO_TIMEOUT_S)


def test_redis_through_the_proxy_down_and_up_again(
    client: ToxiproxyClient, redis_port: int
) -> None:
    port = port_of(client.create_proxy("redis", "127.0.0.1:0", f"127.0.0.1:{redis_port}"))
    assert redis_ping(port) == b"+PONG\r\n"

    with connect(port) as pooled:
        pooled.sendall(b"PING\r\n")  # inline command form
        assert recv_exactly(pooled, 7) == b"+PONG\r\n"

        client.set_enabled("redis", False)
        assert closed_by_peer(pooled)
    with pytest.raises(ConnectionRefusedError):
        redis_ping(port)

    client.set_enabled("redis", True)
    assert redis_ping(port) == b"+PONG\r\n"


def test_command_line_entry_point(tmp_path: Path, echo: EchoServer) -> None:
    config = tmp_path / "proxies.json"
    proxies = [{"name": "echo", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{echo.port}"}]
    config.write_text(json.dumps(proxies))
    command = [sys.executable, "-m", "chaos.proxy", "--port", "0", "--config", str(config)]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:  # a thread, so that waiting for a line can have a deadline
        for line in process.stderr:
            lines.put(line)

    reader = threading.Thread(target=pump)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        url = None
        while url is None:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if match := re.search(r"control API listening on (http://\S+)", line):
                url = match.group(1)

        client = ToxiproxyClient(url, timeout=IO_TIMEOUT_S)
        with connect(port_of(client.get_proxy("echo"))) as sock:
            round_trip(sock)

        process.send_signal(signal.SIGTERM)
        assert process.wait(IO_TIMEOUT_S * 2) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(IO_TIMEOUT_S)
        reader.join(IO_TIMEOUT_S)
        process.stderr.close()
    logged = "".join(lines.queue)
    assert "proxy server stopped" in logged
