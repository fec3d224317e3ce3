"""Shared HTTP plumbing for the chaos downstream simulators.

Each simulator (:mod:`chaos.payments`, :mod:`chaos.receiver`) runs two small stdlib HTTP
servers:

* the *API port* plays the external service; it can be slowed, made to fail, or taken
  ``down`` -- its listening socket is closed, so clients get a real TCP connection refusal;
* the *control port* holds the fault switches and counters. It is never faulted and never
  goes down, so a test can always reach it, even while the API port refuses connections.

This module holds what both share: request/response types and JSON helpers, a tiny
router, the two-port start/stop/down-rebind machinery, fault switch parsing and the CLI
scaffolding.
"""

from __future__ import annotations

import abc
import argparse
import json
import logging
import random
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

MAX_BODY_BYTES = 1 << 20
# Statuses whose standard meaning includes "come back later", so they carry Retry-After.
RETRY_AFTER_STATUSES = frozenset({429, 503})
# How often an idle serve_forever loop notices shutdown(); small so `down` is prompt.
_POLL_INTERVAL_S = 0.05


class HttpError(Exception):
    """Raised inside a route to answer with a JSON error body ``{"error", "detail"}``."""

    def __init__(
        self, status: int, error: str, detail: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})

    def response(self) -> Response:
        """The error as a :class:`Response`."""
        return error_response(self.status, self.error, self.detail, self.headers)


@dataclass(frozen=True)
class Request:
    """One parsed HTTP request; header names are lower-cased."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        """Return a header value by case-insensitive name, or None."""
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """Parse the body as JSON, raising a 400 :class:`HttpError` if it is not."""
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise HttpError(400, "invalid_json", f"body is not valid JSON: {exc}") from exc

    def json_object(self) -> dict[str, Any]:
        """Parse the body as a JSON object, raising a 400 :class:`HttpError` otherwise."""
        data = self.json()
        if not isinstance(data, dict):
            raise HttpError(400, "invalid_json", "body must be a JSON object")
        return data


@dataclass
class Response:
    """A response to write; ``body`` is JSON-serialised unless it is None (empty body)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def error_response(
    status: int, error: str, detail: str = "", headers: Mapping[str, str] | None = None
) -> Response:
    """Build the JSON error shape every simulator endpoint uses."""
    return Response(status, {"error": error, "detail": detail}, dict(headers or {}))


Route = Callable[[Request], Response]
# path -> {method: route}. A path ending in "/*" matches every path under that prefix.
Routes = Mapping[str, Mapping[str, Route]]


def dispatch(request: Request, routes: Routes) -> Response:
    """Call the route for ``request``: 404 for an unknown path, 405 for a wrong method."""
    methods = routes.get(request.path)
    if methods is None:
        methods = next(
            (
                methods
                for pattern, methods in routes.items()
                if pattern.endswith("/*") and request.path.startswith(pattern[:-1])
            ),
            None,
        )
    if methods is None:
        return error_response(404, "not_found", f"no route for {request.path}")
    route = methods.get(request.method)
    if route is None:
        allow = ", ".join(sorted(methods))
        return error_response(405, "method_not_allowed", f"allowed: {allow}", {"Allow": allow})
    try:
        return route(request)
    except HttpError as exc:
        return exc.response()


class _Handler(BaseHTTPRequestHandler):
    """Turns raw HTTP into :class:`Request`, calls the server's dispatcher, logs one line."""

    server: _Server
    # HTTP/1.0 closes every connection after its response, so a keep-alive connection can
    # never hide `down` from a client, and stop() has no idle connections to wait out.
    protocol_version = "HTTP/1.0"
    # A client that connects and never sends must not pin a handler thread (and stop()).
    timeout = 10
    server_version = "chaos-sim/1.0"

    def _handle(self) -> None:
        started = time.monotonic()
        try:
            request = Request(
                method=self.command,
                path=urlsplit(self.path).path,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=self._read_body(),
            )
            response = self.server.dispatch(request)
        except HttpError as exc:
            response = exc.response()
        except Exception:
            self.server.logger.exception("unhandled error for %s %s", self.command, self.path)
            response = error_response(500, "internal_error", "unhandled simulator error")
        self._write(response)
        elapsed_ms = (time.monotonic() - started) * 1000
        self.server.logger.info(
            "%s %s %d %.1fms", self.command, self.path, response.status, elapsed_ms
        )

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _read_body(self) -> bytes:
        raw_length = self.headers.get("Content-Length") or "0"
        try:
            length = int(raw_length)
        except ValueError as exc:
            raise HttpError(400, "invalid_content_length", raw_length) from exc
        if length < 0:
            raise HttpError(400, "invalid_content_length", raw_length)
        if length > MAX_BODY_BYTES:
            raise HttpError(413, "body_too_large", f"limit is {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _write(self, response: Response) -> None:
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        try:
            self.send_response(response.status)
            if response.body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            # The client gave up (e.g. its timeout fired during injected latency).
            self.server.logger.debug("client went away before %s %s", self.command, self.path)

    def log_message(self, fmt: str, *args: Any) -> None:
        # _handle already logs one line per request; keep the stdlib's stderr lines out.
        self.server.logger.debug(fmt, *args)


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that hands every request to one dispatcher callable."""

    # Non-daemon, tracked handler threads: server_close() waits for in-flight requests, so
    # stop() leaves no thread behind.
    daemon_threads = False
    block_on_close = True
    # socketserver's default listen backlog of 5 resets connections under a burst of
    # concurrent clients -- exactly what the idempotency race tests send.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        dispatcher: Callable[[Request], Response],
        log: logging.Logger,
    ) -> None:
        self.dispatch = dispatcher
        self.logger = log
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall on a
        # misconfigured resolver; the simulators never need it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class DualPortServer:
    """An API server that can be taken down and re-bound, plus an always-up control server."""

    def __init__(
        self,
        host: str,
        api_port: int,
        control_port: int,
        *,
        api_dispatch: Callable[[Request], Response],
        control_dispatch: Callable[[Request], Response],
        log: logging.Logger,
    ) -> None:
        if api_port and api_port == control_port:
            raise ValueError("the API port and the control port must differ")
        self.host = host
        self._api_port = api_port
        self._control_port = control_port
        self._api_dispatch = api_dispatch
        self._control_dispatch = control_dispatch
        self._log = log
        self._lock = threading.Lock()  # serialises start/stop/down/up
        self._api: tuple[_Server, threading.Thread] | None = None
        self._control: tuple[_Server, threading.Thread] | None = None
        self._started = False

    @property
    def api_port(self) -> int:
        """The API port (the bound one once started, even while down)."""
        return self._api_port

    @property
    def control_port(self) -> int:
        """The control port (the bound one once started)."""
        return self._control_port

    @property
    def is_down(self) -> bool:
        """True while the API port is closed (only meaningful once started)."""
        return self._started and self._api is None

    def start(self) -> tuple[int, int]:
        """Bind both ports, serve each on a background thread, return (api, control) ports."""
        with self._lock:
            if self._started:
                raise RuntimeError("already started")
            control = _Server((self.host, self._control_port), self._control_dispatch, self._log)
            try:
                api = _Server((self.host, self._api_port), self._api_dispatch, self._log)
            except OSError:
                control.server_close()
                raise
            self._control_port = control.server_port
            self._api_port = api.server_port
            self._control = (control, self._serve(control, "control"))
            self._api = (api, self._serve(api, "api"))
            self._started = True
            return self._api_port, self._control_port

    def stop(self) -> None:
        """Close both ports and wait for every server and handler thread to finish."""
        with self._lock:
            for served in (self._api, self._control):
                if served is not None:
                    self._close(*served)
            self._api = self._control = None
            self._started = False

    def set_down(self, down: bool) -> None:
        """Close the API listening socket (refusing connections) or re-bind the same port."""
        with self._lock:
            if not self._started or down == (self._api is None):
                return
            if down:
                assert self._api is not None
                self._close(*self._api)
                self._api = None
            else:
                api = _Server((self.host, self._api_port), self._api_dispatch, self._log)
                self._api = (api, self._serve(api, "api"))

    def _serve(self, server: _Server, role: str) -> threading.Thread:
        # Daemon only as a safety net for a forgotten stop(); stop() joins it.
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_S},
            name=f"{self._log.name}-{role}-{server.server_port}",
            daemon=True,
        )
        thread.start()
        return thread

    @staticmethod
    def _close(server: _Server, thread: threading.Thread) -> None:
        server.shutdown()  # stop accepting; returns once serve_forever has exited
        server.server_close()  # close the socket (-> ECONNREFUSED) and join handler threads
        thread.join()


@dataclass(frozen=True)
class FaultConfig:
    """The fault switches of one simulator. Every field defaults to "no fault".

    * ``error_rate`` -- probability (0..1) that a request fails with ``error_status``;
    * ``error_status`` -- status for ``error_rate`` and ``fail_first_n`` failures;
    * ``status`` -- when set, every request fails with this status;
    * ``retry_after`` -- seconds sent as ``Retry-After`` on injected 429 and 503 answers;
    * ``latency_ms`` -- delay added before answering, plus a uniform random
      ``0..latency_jitter_ms`` on top (so ``latency_ms`` is a lower bound);
    * ``fail_first_n`` -- the next N requests fail with ``error_status``; counts down;
    * ``down`` -- the API port's listening socket is closed, so connections are refused.

    Precedence when several apply: ``fail_first_n``, then ``status``, then ``error_rate``.
    """

    error_rate: float = 0.0
    error_status: int = 500
    status: int | None = None
    retry_after: int = 1
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    fail_first_n: int = 0
    down: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The switches as a JSON-ready dict."""
        return asdict(self)


_FAULT_FIELDS = frozenset(f.name for f in fields(FaultConfig))


def _number(name: str, value: Any, low: float, high: float | None = None) -> float:
    # bool is an int subclass; `true` as a rate or a delay is a client bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}")
    return float(value)


def _integer(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}")
    return value


def _status(name: str, value: Any, allowed: Container[int]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ValueError(f"{name} {value!r} is not an allowed fault status")
    return value


def parse_fault_changes(
    changes: Mapping[str, Any], allowed_statuses: Container[int]
) -> dict[str, Any]:
    """Validate a partial fault update and return it normalised; raise ValueError if invalid.

    Unknown keys are rejected so a typo (``"latency"``) cannot silently do nothing.
    """
    unknown = set(changes) - _FAULT_FIELDS
    if unknown:
        raise ValueError(f"unknown fault switches: {', '.join(sorted(unknown))}")
    parsers: dict[str, Callable[[str, Any], Any]] = {
        "error_rate": lambda n, v: _number(n, v, 0.0, 1.0),
        "error_status": lambda n, v: _status(n, v, allowed_statuses),
        "status": lambda n, v: None if v is None else _status(n, v, allowed_statuses),
        "retry_after": lambda n, v: _integer(n, v, 0),
        "latency_ms": lambda n, v: _number(n, v, 0.0),
        "latency_jitter_ms": lambda n, v: _number(n, v, 0.0),
        "fail_first_n": lambda n, v: _integer(n, v, 0),
        "down": _boolean,
    }
    return {name: parsers[name](name, value) for name, value in changes.items()}


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


@dataclass(frozen=True)
class FaultDecision:
    """What the switches decided for one request: a delay, and a status if it must fail."""

    delay_s: float
    status: int | None
    retry_after: int


class FaultSwitches:
    """Thread-safe fault switches with an optionally seeded random source."""

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._config = FaultConfig()
        self._rng = random.Random(seed)

    def snapshot(self) -> FaultConfig:
        """The current switches."""
        with self._lock:
            return self._config

    def apply(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Merge already-validated changes into the switches (under the lock, so a
        concurrent ``fail_first_n`` countdown is never lost) and return the result."""
        with self._lock:
            self._config = replace(self._config, **changes)
            return self._config

    def reset(self) -> None:
        """Clear every switch and re-seed, so a run after reset repeats the first one."""
        with self._lock:
            self._config = FaultConfig()
            self._rng = random.Random(self._seed)

    def decide(self) -> FaultDecision:
        """Decide the fault for one request, consuming one ``fail_first_n`` if any."""
        with self._lock:
            config = self._config
            delay_ms = config.latency_ms
            if config.latency_jitter_ms:
                delay_ms += self._rng.uniform(0.0, config.latency_jitter_ms)
            status: int | None = None
            if config.fail_first_n > 0:
                self._config = replace(config, fail_first_n=config.fail_first_n - 1)
                status = config.error_status
            elif config.status is not None:
                status = config.status
            elif config.error_rate > 0 and self._rng.random() < config.error_rate:
                status = config.error_status
            return FaultDecision(delay_ms / 1000, status, config.retry_after)


class ChaosService(abc.ABC):
    """Base for a simulator: two ports, fault switches and the shared control endpoints.

    Subclasses set :attr:`name` and :attr:`fault_statuses`, provide :meth:`api_routes`,
    optionally :meth:`control_routes`, and implement :meth:`_reset_state`. They guard their
    own state with :attr:`_lock` and call :meth:`inject_fault` in faultable routes.

    Shared endpoints: ``GET /healthz`` on both ports; on the control port
    ``GET /control/faults``, ``POST /control/faults`` (partial update, returns the
    switches) and ``POST /control/reset`` (faults, counters and recorded data).
    """

    name: ClassVar[str]
    fault_statuses: ClassVar[Container[int]]

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        *,
        seed: int | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._faults = FaultSwitches(seed)
        # Set by stop() so handlers sleeping in injected latency wake up instead of pinning it.
        self._stopping = threading.Event()
        self.logger = logging.getLogger(f"chaos.{self.name}")
        self._server = DualPortServer(
            host,
            port,
            control_port,
            api_dispatch=self._dispatch_api,
            control_dispatch=self._dispatch_control,
            log=self.logger,
        )
        health: Routes = {"/healthz": {"GET": self._healthz}}
        self._api_routes: Routes = {**health, **self.api_routes()}
        self._control_routes: Routes = {
            **health,
            "/control/faults": {"GET": self._get_faults, "POST": self._post_faults},
            "/control/reset": {"POST": self._post_reset},
            **self.control_routes(),
        }

    @abc.abstractmethod
    def api_routes(self) -> Routes:
        """Routes served on the API port besides ``/healthz``; a route is faultable if it
        calls :meth:`inject_fault`."""

    def control_routes(self) -> Routes:
        """Extra routes served on the control port."""
        return {}

    @abc.abstractmethod
    def _reset_state(self) -> None:
        """Clear counters and recorded data; called with :attr:`_lock` held."""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> tuple[int, int]:
        """Start serving in background threads; return the bound (api_port, control_port)."""
        self._stopping.clear()
        return self._server.start()

    def stop(self) -> None:
        """Stop both servers and wait for all their threads."""
        self._stopping.set()
        self._server.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """The interface both ports listen on."""
        return self._server.host

    @property
    def api_port(self) -> int:
        """The API port (bound port once started)."""
        return self._server.api_port

    @property
    def control_port(self) -> int:
        """The control port (bound port once started)."""
        return self._server.control_port

    @property
    def api_url(self) -> str:
        """Base URL of the API port."""
        return f"http://{self.host}:{self.api_port}"

    @property
    def control_url(self) -> str:
        """Base URL of the control port."""
        return f"http://{self.host}:{self.control_port}"

    # -- fault switches --------------------------------------------------------------------

    def faults(self) -> dict[str, Any]:
        """The current fault switches."""
        return self._faults.snapshot().to_dict()

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Change some fault switches (others keep their value); return all of them.

        Raises ValueError for an unknown switch or an invalid value, changing nothing.
        """
        parsed = parse_fault_changes(changes, self.fault_statuses)
        if "down" in parsed:
            # Flip the socket first: if re-binding fails the switches still tell the truth.
            self._server.set_down(parsed["down"])
        return self._faults.apply(parsed).to_dict()

    def reset(self) -> None:
        """Clear every fault switch (bringing the API port back up), counter and record."""
        self._server.set_down(False)
        self._faults.reset()
        with self._lock:
            self._reset_state()

    def inject_fault(self) -> Response | None:
        """Apply the switches to one API request: sleep the latency, then return the
        injected error response, or None when the request should be served normally."""
        decision = self._faults.decide()
        if decision.delay_s > 0:
            self._stopping.wait(decision.delay_s)  # the delay *is* the fault
        if decision.status is None:
            return None
        headers = {}
        if decision.status in RETRY_AFTER_STATUSES:
            headers["Retry-After"] = str(decision.retry_after)
        return error_response(
            decision.status, "injected_fault", f"{self.name} simulator fault switch", headers
        )

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch_api(self, request: Request) -> Response:
        return dispatch(request, self._api_routes)

    def _dispatch_control(self, request: Request) -> Response:
        return dispatch(request, self._control_routes)

    def _healthz(self, _request: Request) -> Response:
        return Response(200, {"status": "ok", "service": self.name})

    def _get_faults(self, _request: Request) -> Response:
        return Response(200, self.faults())

    def _post_faults(self, request: Request) -> Response:
        try:
            return Response(200, self.set_faults(**request.json_object()))
        except ValueError as exc:
            raise HttpError(400, "invalid_faults", str(exc)) from exc

    def _post_reset(self, _request: Request) -> Response:
        self.reset()
        return Response(200, {"status": "reset"})


def build_arg_parser(description: str, port: int, control_port: int) -> argparse.ArgumentParser:
    """The CLI flags every simulator shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=port, help="API port (default: %(default)s)")
    parser.add_argument(
        "--control-port", type=int, default=control_port, help="control port (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible faults")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    return parser


def run_until_signalled(service: ChaosService, log_level: str = "INFO") -> int:
    """Serve until SIGINT or SIGTERM, then shut down gracefully; return the exit code."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        api_port, control_port = service.start()
        service.logger.info(
            "listening api=http://%s:%d control=http://%s:%d",
            service.host,
            api_port,
            service.host,
            control_port,
        )
        stop.wait()
        service.logger.info("shutting down")
        service.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that was free a moment ago (for callers that need it before binding)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
