"""A whole stack the harness starts itself, on free ports: the CI stack and ``--stack local``.

gunicorn (subprocess) and, optionally, a Celery worker with beat embedded (subprocess)
reach Postgres, Redis and payments only through the chaos proxy (in a thread). Payments
and the webhook receiver run in threads; Redis is a redis-server of our own on a free
port (so ``redis-kill`` may kill it), never the shared one. Postgres is the database
given (the test database in CI); the proxy is the only way faults reach it.

Everything started is stopped by :meth:`LocalStack.stop`, process groups included.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from chaos.commands import GUNICORN_COMMAND, celery_worker_command, redis_server_command
from chaos.scenarios.client import ChaosError, request
from chaos.scenarios.faults import Endpoints
from chaos.scenarios.load import settings_of_env
from chaos.toxiproxy_client import ToxiproxyClient


def stop_stacks_on_sigterm() -> None:
    """Make SIGTERM unwind the stack like Ctrl-C does, so every ``with LocalStack``
    stops the processes it started. Python's default for SIGTERM ends the process
    without running ``finally`` blocks: a killed ``chaos run`` left its gunicorn, Celery
    worker, beat, proxy and simulators running until they were killed by hand, holding
    CPU and connections under every run after it. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return

    def unwind(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)


ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

# Compressed time for CI and local runs: breakers re-try after 1-2 s instead of 5-60 s,
# deferred payments and webhook retries start within a second. Durations only: the
# worker model, bulkheads, timeouts and rate limits stay the shipped ones (experiments
# make their users in the database, not through the rate-limited signup).
COMPRESSED_ENV = {
    "POSTGRES_BREAKER_RESET_S": "1",
    "PAYMENTS_BREAKER_RESET_S": "2",
    # Probes look at open breakers five times as often, so recovery follows the heal
    # within the compressed open period (the thresholds stay the shipped ones).
    "BREAKER_PROBE_TICK_S": "0.1",
    "ORDERS_DEFERRED_PAYMENT_BASE_S": "0.2",
    "ORDERS_DEFERRED_PAYMENT_SWEEP_S": "1",
    "WEBHOOK_BREAKER_RESET_S": "2",
    "WEBHOOKS_RETRY_BASE_S": "0.5",
    "WEBHOOKS_RETRY_CAP_S": "2",
    "WEBHOOKS_BREAKER_JITTER_S": "0.5",
    "WEBHOOKS_SWEEP_INTERVAL_S": "1",
}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise ChaosError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


class Process:
    """A child in its own process group, its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.log_path = log
        self._log: IO[bytes] | None = None
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signum)

    def stop(self) -> None:
        if self.popen is not None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class OwnedRedis:
    """A redis-server on a free port, ours to kill -9 and start again (empty)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ChaosError("redis-server not found on PATH (needed for a harness-owned Redis)")
        self.port = free_port()
        command = [binary, *redis_server_command(port=self.port, workdir=workdir)[1:]]
        self.process = Process("redis", command, dict(os.environ), workdir / "redis.log")

    def _pings(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        """Start it (no-op while it runs) and wait until it answers PING."""
        if self.process.alive():
            return
        self.process.stop()
        self.process.start()
        _wait(self._pings, 15, "redis-server")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save, connections cut mid-flight."""
        self.process.signal(signal.SIGKILL)
        if self.process.popen is not None:
            self.process.popen.wait()

    def stop(self) -> None:
        self.process.stop()


class LocalStack:
    """gunicorn + proxy + payments + receiver + own Redis [+ Celery worker with beat]."""

    def __init__(
        self,
        *,
        database_url: str,
        workdir: Path,
        base_env: dict[str, str],
        resilience_enabled: bool = True,
        worker: bool = True,
        web_workers: int | None = None,
        env: dict[str, str] | None = None,
        proxied: bool = True,
    ) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.base_env = base_env
        self.resilience_enabled = resilience_enabled
        self.worker = worker
        self.web_workers = web_workers
        self.extra_env = env or {}
        # False: the stack talks to Postgres, Redis and payments directly, as in
        # production; for a scenario that injects no network fault (overload), whose
        # every round trip through the proxy would otherwise add the rig's own latency.
        self.proxied = proxied
        self.processes: list[Process] = []
        self.endpoints: Endpoints | None = None
        self._exit = ExitStack()

    def __enter__(self) -> Endpoints:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Endpoints:
        self.workdir.mkdir(parents=True, exist_ok=True)
        redis = OwnedRedis(self.workdir)
        redis.start()
        self._exit.callback(redis.stop)

        # The simulators and the fault proxy run in processes of their own: in the
        # command's process they would share one GIL with the traffic's client threads,
        # and every Postgres and Redis round trip would wait for the client under load.
        payments_url, payments_control = self._simulator("payments", "chaos.payments")
        receiver_url, receiver_control = self._simulator("receiver", "chaos.receiver")
        proxy_port = free_port()
        self._start(
            Process(
                "proxy",
                [sys.executable, "-m", "chaos.proxy", "--port", str(proxy_port),
                 "--log-level", "WARNING"],
                dict(self.base_env),
                self.workdir / "proxy.log",
            )
        )  # fmt: skip
        proxy = ToxiproxyClient(f"http://127.0.0.1:{proxy_port}")
        _wait(lambda: self._answers(f"http://127.0.0.1:{proxy_port}/version"), START_TIMEOUT_S,
              "chaos proxy")  # fmt: skip
        db = urlsplit(self.database_url)
        listen = {}
        for name, upstream in (
            ("postgres", f"{db.hostname}:{db.port or 5432}"),
            ("redis", f"127.0.0.1:{redis.port}"),
            ("payments", urlsplit(payments_url).netloc),
        ):
            created = proxy.create_proxy(name, "127.0.0.1:0", upstream)
            listen[name] = created["listen"] if self.proxied else upstream
        credentials = db.netloc.rpartition("@")[0]
        web_port = free_port()
        metrics_dir = self.workdir / "prometheus"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        env = {
            **self.base_env,
            **COMPRESSED_ENV,
            "DATABASE_URL": db._replace(netloc=f"{credentials}@{listen['postgres']}").geturl(),
            "REDIS_URL": f"redis://{listen['redis']}/0",
            "PAYMENTS_URL": f"http://{listen['payments']}",
            "RESILIENCE_ENABLED": "true" if self.resilience_enabled else "false",
            "WEB_PORT": str(web_port),
            "WORKER_METRICS_PORT": "0",
            "PATH": f"{BIN}{os.pathsep}{self.base_env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        if self.web_workers is not None:
            env["WEB_WORKERS"] = str(self.web_workers)
        # What the stack runs on (WEB_WORKERS, WEB_THREADS, policies): read from its own
        # settings, so that loads and checks follow the shipped defaults.
        stack_settings = settings_of_env(
            {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        )
        for name in ("web", "worker"):
            (metrics_dir / name).mkdir(parents=True)
        web = Process(
            "web",
            GUNICORN_COMMAND,
            {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir / "web")},
            self.workdir / "web.log",
        )
        self._start(web)
        base_url = f"http://127.0.0.1:{web_port}"
        if self.worker:
            worker = Process(
                "worker",
                celery_worker_command(
                    queues="default,webhooks",
                    name=f"chaos-{web_port}",
                    concurrency=2,
                    beat_schedule=self.workdir / "beat-schedule",
                ),
                {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir / "worker")},
                self.workdir / "worker.log",
            )
            self._start(worker)
        _wait(lambda: self._up(base_url), START_TIMEOUT_S, f"gunicorn at {base_url}")
        if self.worker:
            _wait(lambda: "ready" in worker.log_text(), START_TIMEOUT_S, "celery worker")
        self.endpoints = Endpoints(
            base_url=base_url,
            proxy_url=f"http://127.0.0.1:{proxy_port}",
            payments_control_url=payments_control,
            receiver_control_url=receiver_control,
            receiver_url=receiver_url,
            redis=redis,
            has_worker=self.worker,
            label=f"harness stack ({stack_settings.web_workers} gunicorn workers x "
            f"{stack_settings.web_threads} threads"
            f"{', a Celery worker' if self.worker else ''}; compressed timings"
            f"{'' if self.proxied else '; no fault proxy in the way'})",
            env=env,
            settings=stack_settings,
        )
        return self.endpoints

    def _simulator(self, name: str, module: str) -> tuple[str, str]:
        """Start ``python -m module`` on free ports; its API and control URLs."""
        api_port, control_port = free_port(), free_port()
        command = [
            sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(api_port),
            "--control-port", str(control_port), "--log-level", "WARNING",
        ]  # fmt: skip
        self._start(Process(name, command, dict(self.base_env), self.workdir / f"{name}.log"))
        control = f"http://127.0.0.1:{control_port}"
        _wait(lambda: self._answers(f"{control}/healthz"), START_TIMEOUT_S, f"{name} simulator")
        return f"http://127.0.0.1:{api_port}", control

    def _answers(self, url: str) -> bool:
        for process in self.processes:
            if not process.alive():
                raise ChaosError(f"{process.name} exited: {process.log_text()[-2000:]}")
        return request("GET", url, timeout=2).status == 200

    def _start(self, process: Process) -> None:
        process.start()
        self.processes.append(process)
        self._exit.callback(process.stop)

    def _up(self, base_url: str) -> bool:
        return self._answers(f"{base_url}/healthz")

    def stop(self) -> None:
        """Stop everything, in reverse order of start."""
        self._exit.close()
