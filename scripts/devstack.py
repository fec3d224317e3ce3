"""Run the whole local stack in the foreground: every process of the Procfile.

Why not honcho/foreman: we also need to wipe the Prometheus multiprocess directory
before start, wait until the web process is ready before printing the URLs, restart a
process that exits (as systemd or Kubernetes would; a Celery worker can exit when its
broker dies mid-task) and stop the whole stack when one keeps exiting, and stop every
process group on Ctrl-C, so that `make run` never leaves half a stack running. That is
a couple of hundred lines.

Chaos routing: the app processes reach Postgres, Redis and payments through the chaos
proxy (``proxy:`` in the Procfile), so ``manage.py chaos`` can cut or slow them. This
script writes the proxy's populate file and points DATABASE_URL, REDIS_URL and
PAYMENTS_URL at the proxy's listen ports. ``CHAOS_PROXY_ROUTING=off`` connects the app
directly (the proxy still runs, unused).

Ports: before starting anything, every port the selected processes will listen on
(``--port``/``--control-port`` and ``WORKER_METRICS_PORT`` in the Procfile, ``WEB_PORT``,
the proxy's listen ports) must be free; a stack left over from an earlier run would
otherwise keep answering in place of the new one. A taken port stops the script with
the port and the process holding it.

Usage: python scripts/devstack.py [--procfile Procfile] [--only web,beat]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
READY_TIMEOUT_S = 60
STOP_GRACE_S = 15
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60
COLORS = ["36", "33", "35", "32", "34", "31", "96", "93"]
# Where the chaos proxy listens for each dependency: "2" + the usual port, easy to spot.
PROXY_CONFIG = RUN_DIR / "chaos-proxy.json"
PROXY_LISTEN = {"postgres": 25432, "redis": 26379, "payments": 28101}


def read_procfile(path: Path) -> dict[str, str]:
    """Parse ``name: command`` lines, skipping blanks and comments."""
    processes = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = command.strip()
    return processes


_ENV_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")
_PORT_FLAG = re.compile(r"(?:--port|--control-port|WORKER_METRICS_PORT=)\s*(\d+)")


def ports_of(name: str, command: str, env: dict[str, str]) -> list[int]:
    """The TCP ports one Procfile process will listen on, with ``env`` applied."""
    expanded = _ENV_DEFAULT.sub(lambda m: env.get(m[1]) or m[2], command)
    ports = [int(port) for port in _PORT_FLAG.findall(expanded)]
    if name == "web":
        ports.append(int(env.get("WEB_PORT", "8000")))
    if name == "proxy":
        ports += PROXY_LISTEN.values()
    return ports


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), Path(table).open() as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(fields[9])  # 0A: LISTEN
    return inodes


def port_holder(port: int) -> str:
    """Who listens on ``port``: "pid N (command line)", or why we cannot tell."""
    inodes = _listening_inodes(port)
    if not inodes:
        return "an unknown process (not visible in /proc/net/tcp)"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                target = str(fd.readlink())
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    return f"pid {proc.name} ({cmdline.strip()[:120]})"
    return "a process of another user (its pid is not visible)"


def taken_ports(processes: dict[str, str], env: dict[str, str]) -> list[tuple[str, int, str]]:
    """(process, port, holder) for every port a selected process needs that is taken."""
    taken = []
    for name, command in processes.items():
        for port in ports_of(name, command, env):
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    taken.append((name, port, port_holder(port)))
    return taken


def pump(name: str, color: str, stream, width: int) -> None:
    """Copy a child's output to ours, each line prefixed with the process name."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        sys.stdout.write(f"\033[{color}m{name:<{width}} |\033[0m {line}\n")
        sys.stdout.flush()


def wait_ready(url: str, deadline: float) -> bool:
    """Poll ``url`` until it answers 200 or the deadline passes."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def route_through_proxy(env: dict[str, str]) -> None:
    """Write the proxy's populate file and, unless routing is off, aim the app at the proxy.

    Only ``env`` (what the children inherit) changes. URLs set apart from these three
    (CELERY_BROKER_URL, RATELIMIT_REDIS_URL, ...) keep their own address.
    """
    proxies = []
    for name, var, default, default_port in (
        ("postgres", "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/resilient", 5432),
        ("redis", "REDIS_URL", "redis://127.0.0.1:6379/0", 6379),
        ("payments", "PAYMENTS_URL", "http://127.0.0.1:8101", 80),
    ):
        url = urlsplit(env.get(var) or default)
        upstream = f"{url.hostname}:{url.port or default_port}"
        listen = f"127.0.0.1:{PROXY_LISTEN[name]}"
        proxies.append({"name": name, "listen": listen, "upstream": upstream})
        if env.get("CHAOS_PROXY_ROUTING", "on").lower() not in {"off", "0", "false", "no"}:
            credentials = url.netloc.rpartition("@")[0]
            netloc = f"{credentials}@{listen}" if credentials else listen
            env[var] = url._replace(netloc=netloc).geturl()
    PROXY_CONFIG.write_text(json.dumps(proxies, indent=2) + "\n")


def spawn(name: str, command: str, env: dict[str, str], color: str, width: int) -> subprocess.Popen:
    """Start one process in its own process group, its output prefixed with its name."""
    child = subprocess.Popen(  # noqa: S602 - the Procfile is ours; it needs the shell
        command,
        shell=True,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so we can stop all its children
    )
    threading.Thread(target=pump, args=(name, color, child.stdout, width), daemon=True).start()
    return child


def child_environments(processes: dict[str, str], env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each process's environment; forking processes get a metrics directory of their own."""
    metrics_dir = RUN_DIR / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # stale files from dead pids would add up
    environments = {}
    for name in processes:
        child_env = dict(env)
        # One multiprocess directory per process that forks (gunicorn, prefork workers):
        # two sharing one would sum each other's files and wipe them at start.
        if name == "web" or name.startswith("worker"):
            (metrics_dir / name).mkdir(parents=True)
            child_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir / name)
        environments[name] = child_env
    return environments


def announce(env: dict[str, str]) -> bool:
    """Wait for the web process, then print where everything is."""
    base = f"http://{env.get('WEB_HOST', '127.0.0.1')}:{env.get('WEB_PORT', '8000')}"
    if not wait_ready(f"{base}/healthz", time.monotonic() + READY_TIMEOUT_S):
        print(f"web did not become ready within {READY_TIMEOUT_S} s", flush=True)
        return False
    print(
        f"\nReady.\n  API docs  {base}/api/docs/\n  Admin     {base}/admin/\n"
        f"  Metrics   {base}/metrics\n  Readiness {base}/readyz\nCtrl-C stops everything.\n",
        flush=True,
    )
    return True


def supervise(
    children: dict[str, subprocess.Popen],
    restart: Callable[[str], subprocess.Popen],
    stopping: threading.Event,
) -> int:
    """Restart a process that exits, like a production supervisor; give up if it flaps.

    A Celery worker can exit when its broker dies mid-task (GOTCHAS.md); restarting it is
    what systemd or Kubernetes would do. More than ``MAX_RESTARTS`` exits of one process
    within ``RESTART_WINDOW_S`` stops the whole stack instead.
    """
    exits: dict[str, list[float]] = {name: [] for name in children}
    while not stopping.is_set():
        for name, child in list(children.items()):
            if child.poll() is None:
                continue
            now = time.monotonic()
            exits[name] = [t for t in exits[name] if now - t < RESTART_WINDOW_S] + [now]
            if len(exits[name]) > MAX_RESTARTS:
                print(f"{name} keeps exiting ({child.returncode}); stopping the stack", flush=True)
                return 1
            print(f"{name} exited with {child.returncode}; restarting it", flush=True)
            # Its own children (a prefork pool) may outlive it: end the whole group first.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            children[name] = restart(name)
        stopping.wait(0.5)
    return 0


def stop_all(children: dict[str, subprocess.Popen]) -> None:
    """SIGTERM every process group, SIGKILL what is left after the grace period."""
    for child in children.values():
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procfile", default=str(ROOT / "Procfile"))
    parser.add_argument("--only", default="", help="comma-separated process names")
    args = parser.parse_args()

    processes = read_procfile(Path(args.procfile))
    if args.only:
        processes = {n: c for n, c in processes.items() if n in args.only.split(",")}
    env = dict(os.environ)
    taken = taken_ports(processes, env)
    if taken:
        for name, port, holder in taken:
            print(f"make run: port {port} (for {name}) is taken by {holder}", file=sys.stderr)
        print(
            "Refusing to start: stop that process (a stack left from an earlier run?) or"
            " choose other ports (WEB_PORT, WORKER_*_METRICS_PORT).",
            file=sys.stderr,
        )
        return 2
    RUN_DIR.mkdir(exist_ok=True)
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    route_through_proxy(env)

    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    environments = child_environments(processes, env)
    width = max(len(n) for n in processes)
    colors = {name: COLORS[i % len(COLORS)] for i, name in enumerate(processes)}

    def start(name: str) -> subprocess.Popen:
        return spawn(name, processes[name], environments[name], colors[name], width)

    children = {name: start(name) for name in processes}
    try:
        if "web" in children and not announce(env):
            return 1
        return supervise(children, start, stopping)
    finally:
        stop_all(children)


if __name__ == "__main__":
    sys.exit(main())
