"""The fleet on one machine: every component a real process on its own ports.

::

    clients -> nginx -> web-1..N (gunicorn masters) --+--> PgBouncer (transaction) -> Postgres
                                                      +--> Redis Cluster (3 masters + 3 replicas)
                                                      +--> broker: Redis + 3 Sentinels
               worker-default-1..M, worker-webhooks-1..K, beat (locked) --> same

:class:`Fleet` starts them in dependency order, waits on each with a deadline, writes the
Prometheus file service discovery targets, and :meth:`Fleet.stop` ends every process
group it started (also when the start fails half-way). Nothing shared is touched: the
only shared server is PostgreSQL, reached through PgBouncer, in the database named by
``DATABASE_URL``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis

from fleet.procs import ROOT, Proc, free_port, port_open, spawn, wait_for

BIN = Path(sys.executable).parent
TOOLS = Path(os.environ.get("FLEET_TOOLS", ROOT / ".venv" / "fleet-tools"))
START_TIMEOUT_S = 90.0
BROKER_MASTER_NAME = "fleet-broker"
GUNICORN_CONF = "config/gunicorn.py"
# nginx's answer when no web node could take a request: the API's documented 503.
UNAVAILABLE_PROBLEM = json.dumps(
    {
        "type": "/api/problems/dependency_unavailable",
        "title": "Service temporarily unavailable",
        "status": 503,
        "code": "dependency_unavailable",
        "detail": "No web node answered; retry later.",
        "dependency": "web",
    }
)
CLUSTER_NODE_TIMEOUT_MS = 2000
SENTINEL_DOWN_AFTER_MS = 2000


@dataclass
class FleetSpec:
    """How many of each node, and the environment every app process gets on top."""

    web_nodes: int = 3
    web_workers: int = 1  # gunicorn workers per web node
    default_workers: int = 1
    webhooks_workers: int = 1
    beats: int = 1  # more than one only to show that the lock keeps one active
    database_url: str = "postgres://postgres@127.0.0.1:5432/resilient_fleet"
    run_dir: Path = ROOT / ".run" / "fleet"
    pgbouncer_web_pool: int = 6
    pgbouncer_background_pool: int = 3
    env: dict[str, str] = field(default_factory=dict)
    settings_module: str = "config.settings.local"


def tool(name: str) -> Path:
    """A fleet binary installed by ``make fleet-tools`` (or on PATH)."""
    candidate = TOOLS / "bin" / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: run `make fleet-tools`")
    return Path(found)


def _redis(port: int, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=timeout, socket_connect_timeout=timeout)


class Fleet:
    """Start, reach, break and stop one fleet (see the module docstring)."""

    def __init__(self, spec: FleetSpec | None = None) -> None:
        self.spec = spec or FleetSpec()
        self.run_dir = Path(self.spec.run_dir)
        self.log_dir = self.run_dir / "logs"
        self.procs: dict[str, Proc] = {}
        self.cluster_ports: list[int] = []
        self.broker_ports: list[int] = []
        self.sentinel_ports: list[int] = []
        self.web_ports: list[int] = []
        self.worker_metrics_ports: dict[str, int] = {}
        self.pgbouncer_port = 0
        self.nginx_port = 0
        self.payments_port = self.payments_control_port = 0
        self.receiver_port = self.receiver_control_port = 0

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Fleet:
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.log_dir.mkdir(parents=True)
        try:
            self.start_redis_cluster()
            self._start_broker()
            self._start_pgbouncer()
            self._start_simulators()
            self._migrate()
            for index in range(1, self.spec.web_nodes + 1):
                self.start_web(index)
            self._start_nginx()
            for queue, count in (
                ("default", self.spec.default_workers),
                ("webhooks", self.spec.webhooks_workers),
            ):
                for index in range(1, count + 1):
                    self.start_worker(queue, index)
            for index in range(1, self.spec.beats + 1):
                self.start_beat(index)
            self.wait_web()
            self.write_prometheus_targets()
        except BaseException:
            self.stop()
            raise
        return self

    def restart_exited(self) -> list[str]:
        """Start again every app process that exited, as a supervisor would; their names."""
        restarted = []
        for name, proc in list(self.procs.items()):
            if proc.alive or not name.startswith(("web-", "worker-", "beat-")):
                continue
            proc.stop(grace_s=1)  # the rest of its group, if any
            if name.startswith("web-"):
                self.start_web(int(name.rsplit("-", 1)[1]))
            elif name.startswith("worker-"):
                queue, index = name.removeprefix("worker-").rsplit("-", 1)
                self.start_worker(queue, int(index))
            else:
                self.start_beat(int(name.rsplit("-", 1)[1]))
            restarted.append(name)
        return restarted

    def stop(self) -> None:
        """Stop every process group, apps first, then the servers they use."""
        order = sorted(
            self.procs.values(),
            key=lambda p: 0 if p.name.startswith(("nginx", "web", "worker", "beat")) else 1,
        )
        for proc in order:
            proc.stop(grace_s=5)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- addresses -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The one entry point: nginx."""
        return f"http://127.0.0.1:{self.nginx_port}"

    def web_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.web_ports[index - 1]}"

    @property
    def redis_cluster_url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{p}" for p in self.cluster_ports)
        return f"redis-cluster://{seeds}/0"

    @property
    def broker_url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports)

    def pgbouncer_url(self, pool: str) -> str:
        db = urlsplit(self.spec.database_url)
        credentials = db.netloc.rpartition("@")[0]
        prefix = f"{credentials}@" if credentials else ""
        return f"postgres://{prefix}127.0.0.1:{self.pgbouncer_port}/{self._pool_db(pool)}"

    def _pool_db(self, pool: str) -> str:
        return f"{urlsplit(self.spec.database_url).path.strip('/')}_{pool}"

    @property
    def instances(self) -> int:
        """Processes that share each rate limit (the fallback bucket divisor)."""
        return self.spec.web_nodes * self.spec.web_workers

    def app_env(self, **extra: str) -> dict[str, str]:
        """The environment of every app process (web, workers, beat, manage.py)."""
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": self.spec.settings_module,
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
                "DATABASE_URL": self.pgbouncer_url("web"),
                "DATABASE_BACKGROUND_URL": self.pgbouncer_url("background"),
                "DB_POOLER": "pgbouncer",
                "REDIS_URL": self.redis_cluster_url,
                "CELERY_BROKER_URL": self.broker_url,
                "CELERY_BROKER_MASTER_NAME": BROKER_MASTER_NAME,
                "PAYMENTS_URL": f"http://127.0.0.1:{self.payments_port}",
                "RATELIMIT_INSTANCES": str(self.instances),
                "RATELIMIT_TRUSTED_PROXIES": "127.0.0.1/32",
                "WEB_WORKERS": str(self.spec.web_workers),
                "DB_REQUEST_POOL_MIN": "1",
                "DB_REQUEST_POOL_MAX": "8",
                "DB_BACKGROUND_POOL_MAX": "2",
            }
        )
        env.update(self.spec.env)
        env.update(extra)
        return env

    # --- Redis Cluster -------------------------------------------------------------------

    def start_redis_cluster(self) -> None:
        """Three masters and three replicas on their own ports (also used alone: bench)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(6):
            port = free_port()
            self.cluster_ports.append(port)
            workdir = self.run_dir / "redis-cluster" / str(port)
            workdir.mkdir(parents=True)
            self.procs[f"redis-cluster-{index + 1}"] = spawn(
                f"redis-cluster-{index + 1}",
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    # The bus port too (default port + 10000) stays in the fleet's range.
                    "--cluster-port",
                    str(free_port()),
                    "--cluster-node-timeout",
                    str(CLUSTER_NODE_TIMEOUT_MS),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                env=os.environ,
                log_dir=self.log_dir,
                port=port,
            )
        for port in self.cluster_ports:
            wait_for(lambda p=port: _redis(p).ping(), timeout=20, what=f"redis {port}")
        subprocess.run(
            ["redis-cli", "--cluster", "create"]
            + [f"127.0.0.1:{p}" for p in self.cluster_ports]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_for(self.cluster_ok, timeout=30, what="Redis Cluster state ok")
        # A replica that never finished its first sync cannot be promoted.
        wait_for(self.replicas_in_sync, timeout=30, what="Redis Cluster replicas in sync")

    def replicas_in_sync(self) -> bool:
        """Three live replicas, each with its link to its master up."""
        synced = 0
        for port in self.cluster_ports:
            proc = self.proc_on(port)
            if proc is None or not proc.alive:
                continue
            info = _redis(port).info("replication")
            if info.get("role") == "slave":
                if info.get("master_link_status") != "up":
                    return False
                synced += 1
        return synced == 3

    def cluster_ok(self) -> bool:
        """Every live node says cluster_state:ok and three masters serve the slots."""
        masters = 0
        for port in self.cluster_ports:
            proc = self.proc_on(port)
            if proc is not None and not proc.alive:
                continue
            info = _redis(port).execute_command("CLUSTER", "INFO")
            info = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in info:
                return False
            if _redis(port).info("replication").get("role") == "master":
                masters += 1
        return masters == 3

    def cluster_masters(self) -> list[int]:
        """Ports of the live nodes that are masters now."""
        return [
            p
            for p in self.cluster_ports
            if (proc := self.proc_on(p)) is not None
            and proc.alive
            and _redis(p).info("replication").get("role") == "master"
        ]

    def proc_on(self, port: int) -> Proc | None:
        for proc in self.procs.values():
            if port in proc.ports.values():
                return proc
        return None

    # --- broker: Redis master + 2 replicas + 3 Sentinels ----------------------------------

    def _start_broker(self) -> None:
        for index in range(3):
            port = free_port()
            self.broker_ports.append(port)
            workdir = self.run_dir / "broker" / str(port)
            workdir.mkdir(parents=True)
            command = [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--dir", str(workdir), "--save", "",
                # Acknowledged writes are on disk within a second and on a replica.
                "--appendonly", "yes", "--appendfsync", "everysec",
                "--min-replicas-to-write", "1", "--min-replicas-max-lag", "5",
            ]  # fmt: skip
            if index:
                command += ["--replicaof", "127.0.0.1", str(self.broker_ports[0])]
            self.procs[f"broker-{index + 1}"] = spawn(
                f"broker-{index + 1}", command, env=os.environ, log_dir=self.log_dir, port=port
            )
        for port in self.broker_ports:
            wait_for(lambda p=port: _redis(p).ping(), timeout=20, what=f"broker redis {port}")
        wait_for(
            lambda: _redis(self.broker_ports[0]).info("replication").get("connected_slaves") == 2,
            timeout=30,
            what="broker replicas in sync",
        )
        for index in range(3):
            port = free_port()
            self.sentinel_ports.append(port)
            workdir = self.run_dir / "sentinel" / str(port)
            workdir.mkdir(parents=True)
            conf = workdir / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {BROKER_MASTER_NAME} 127.0.0.1 {self.broker_ports[0]} 2\n"
                f"sentinel down-after-milliseconds {BROKER_MASTER_NAME} {SENTINEL_DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {BROKER_MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {BROKER_MASTER_NAME} 1\n"
            )
            self.procs[f"sentinel-{index + 1}"] = spawn(
                f"sentinel-{index + 1}",
                ["redis-server", str(conf), "--sentinel"],
                env=os.environ,
                log_dir=self.log_dir,
                port=port,
            )
        for port in self.sentinel_ports:
            wait_for(
                lambda p=port: (
                    _redis(p).execute_command("SENTINEL", "REPLICAS", BROKER_MASTER_NAME)
                    and len(_redis(p).execute_command("SENTINEL", "SENTINELS", BROKER_MASTER_NAME))
                    == 2
                ),
                timeout=30,
                what=f"sentinel {port} sees the replicas and the other sentinels",
            )

    def broker_master(self) -> int:
        """The port the Sentinels name as the broker master now."""
        for port in self.sentinel_ports:
            proc = self.proc_on(port)
            if proc is not None and proc.alive:
                _, master_port = _redis(port).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", BROKER_MASTER_NAME
                )
                return int(master_port)
        raise RuntimeError("no sentinel answers")

    # --- PgBouncer --------------------------------------------------------------------------

    def _start_pgbouncer(self) -> None:
        db = urlsplit(self.spec.database_url)
        self.pgbouncer_port = free_port()
        workdir = self.run_dir / "pgbouncer"
        workdir.mkdir(parents=True)
        user = db.username or "postgres"
        (workdir / "userlist.txt").write_text(f'"{user}" "{db.password or ""}"\n')
        env = self.app_env()

        def timeouts(statement_ms: str) -> str:
            # Applied once per server connection; transaction pooling never resets them
            # (no server_reset_query in that mode), so every transaction runs under them.
            return (
                f"SET statement_timeout = {statement_ms}; "
                f"SET lock_timeout = {env.get('DB_LOCK_TIMEOUT_MS', '1000')}; "
                "SET idle_in_transaction_session_timeout = "
                f"{env.get('DB_IDLE_IN_TRANSACTION_TIMEOUT_MS', '5000')}"
            )

        target = (
            f"host={db.hostname or '127.0.0.1'} port={db.port or 5432} "
            f"dbname={db.path.strip('/')} user={user}"
        )
        web_ms = env.get("DB_REQUEST_STATEMENT_TIMEOUT_MS", "2000")
        bg_ms = env.get("DB_BACKGROUND_STATEMENT_TIMEOUT_MS", "15000")
        web_pool, bg_pool = self.spec.pgbouncer_web_pool, self.spec.pgbouncer_background_pool
        ini = f"""[databases]
{self._pool_db("web")} = {target} pool_size={web_pool} connect_query='{timeouts(web_ms)}'
{self._pool_db("background")} = {target} pool_size={bg_pool} connect_query='{timeouts(bg_ms)}'

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.pgbouncer_port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "userlist.txt"}
pool_mode = transaction
max_client_conn = 300
default_pool_size = 2
reserve_pool_size = 0
max_db_connections = {self.spec.pgbouncer_web_pool + self.spec.pgbouncer_background_pool}
server_lifetime = 3600
server_idle_timeout = 60
server_connect_timeout = 2
server_login_retry = 1
query_wait_timeout = 5
; backstops above the server-side timeouts (seconds): a query PostgreSQL did not cancel
; is cut here, and a client idle in a transaction loses its server connection.
query_timeout = {int(bg_ms) // 1000 + 5}
idle_transaction_timeout = {int(env.get("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", "5000")) // 1000 + 1}
ignore_startup_parameters = extra_float_digits
admin_users = {user}
logfile =
pidfile =
"""
        (workdir / "pgbouncer.ini").write_text(ini)
        self.procs["pgbouncer"] = spawn(
            "pgbouncer",
            # PgBouncer refuses to run as root (CI runs as root): it drops to nobody.
            [str(tool("pgbouncer"))]
            + (["-u", "nobody"] if os.geteuid() == 0 else [])
            + [str(workdir / "pgbouncer.ini")],
            env=os.environ,
            log_dir=self.log_dir,
            port=self.pgbouncer_port,
        )
        wait_for(lambda: port_open(self.pgbouncer_port), timeout=20, what="pgbouncer")

    def restart_pgbouncer(self) -> float:
        """Kill PgBouncer and start it again on the same port; seconds it was away."""
        proc = self.procs["pgbouncer"]
        started = time.monotonic()
        proc.kill()
        wait_for(lambda: not port_open(self.pgbouncer_port), timeout=10, what="pgbouncer gone")
        proc.start()
        wait_for(lambda: port_open(self.pgbouncer_port), timeout=20, what="pgbouncer back")
        return time.monotonic() - started

    # --- simulators, migrations -------------------------------------------------------------

    def _start_simulators(self) -> None:
        env = self.app_env()
        self.payments_port, self.payments_control_port = free_port(), free_port()
        self.procs["payments"] = spawn(
            "payments",
            [
                sys.executable,
                "-m",
                "chaos.payments",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.payments_port),
                "--control-port",
                str(self.payments_control_port),
            ],
            env=env,
            log_dir=self.log_dir,
            port=self.payments_port,
        )
        self.receiver_port, self.receiver_control_port = free_port(), free_port()
        self.procs["receiver"] = spawn(
            "receiver",
            [
                sys.executable,
                "-m",
                "chaos.receiver",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.receiver_port),
                "--control-port",
                str(self.receiver_control_port),
            ],
            env=env,
            log_dir=self.log_dir,
            port=self.receiver_port,
        )

    def _migrate(self) -> None:
        """Create and migrate the database directly (DDL does not belong behind a pooler)."""
        env = self.app_env(DATABASE_URL=self.spec.database_url, DB_POOLER="none")
        env.pop("DATABASE_BACKGROUND_URL", None)
        for args in (["ensure_database"], ["migrate", "--noinput", "--verbosity", "0"]):
            subprocess.run(
                [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, timeout=300
            )

    # --- web nodes, nginx ---------------------------------------------------------------------

    def start_web(self, index: int) -> Proc:
        name = f"web-{index}"
        if len(self.web_ports) < index:
            self.web_ports.append(free_port())
        port = self.web_ports[index - 1]
        metrics_dir = self.run_dir / "prometheus-multiproc" / name
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env = self.app_env(
            WEB_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), FLEET_NODE=name
        )
        self.procs[name] = spawn(
            name,
            [
                sys.executable,
                "-m",
                "gunicorn",
                "config.wsgi:application",
                "-c",
                "config/gunicorn.py",
            ],
            env=env,
            log_dir=self.log_dir,
            port=port,
        )
        return self.procs[name]

    def web_ready(self, index: int) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.web_url(index)}/healthz", timeout=2) as r:  # noqa: S310
                return r.status == 200
        except OSError:
            return False

    def wait_web(self, timeout: float = START_TIMEOUT_S) -> None:
        for index in range(1, self.spec.web_nodes + 1):
            proc = self.procs[f"web-{index}"]
            try:
                wait_for(
                    lambda i=index, p=proc: p.alive and self.web_ready(i),
                    timeout=timeout,
                    what=f"web-{index}",
                )
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}\n{proc.log_tail()}") from exc

    def _start_nginx(self) -> None:
        self.nginx_port = free_port()
        prefix = self.run_dir / "nginx"
        (prefix / "logs").mkdir(parents=True)
        servers = "\n".join(
            f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;"
            for port in self.web_ports
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream web {{
        least_conn;
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{self.nginx_port};
        client_max_body_size 64k;
        location / {{
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # A node that refuses or dies before answering: the request goes to the next
            # one. Never after the request reached a node (POST is not retried; the
            # client retries it with its Idempotency-Key).
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 1s;
            proxy_read_timeout 35s;
        }}
        # A node that died with the request (not retried: see above) or no node left:
        # the API's documented 503, so the client retries with the same Idempotency-Key.
        error_page 502 504 =503 @unavailable;
        location @unavailable {{
            default_type application/problem+json;
            add_header Retry-After 1 always;
            return 503 '{UNAVAILABLE_PROBLEM}';
        }}
    }}
}}
"""
        (prefix / "nginx.conf").write_text(conf)
        nginx = str(tool("nginx"))
        subprocess.run(
            [nginx, "-t", "-q", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self.procs["nginx"] = spawn(
            "nginx",
            [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
            env=os.environ,
            log_dir=self.log_dir,
            port=self.nginx_port,
        )
        wait_for(lambda: port_open(self.nginx_port), timeout=20, what="nginx")

    # --- workers, beat --------------------------------------------------------------------------

    def start_worker(self, queue: str, index: int) -> Proc:
        name = f"worker-{queue}-{index}"
        metrics_port = self.worker_metrics_ports.setdefault(name, free_port())
        metrics_dir = self.run_dir / "prometheus-multiproc" / name
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        concurrency = "2" if queue == "default" else "4"
        env = self.app_env(
            WORKER_METRICS_PORT=str(metrics_port), PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)
        )
        self.procs[name] = spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                queue,
                "-n",
                f"{name}@%h",
                "--pool",
                "prefork",
                "--concurrency",
                concurrency,
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            env=env,
            log_dir=self.log_dir,
            metrics=metrics_port,
        )
        return self.procs[name]

    def start_beat(self, index: int) -> Proc:
        name = f"beat-{index}"
        self.procs[name] = spawn(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "beat",
                "--loglevel",
                "INFO",
                "--scheduler",
                "resilience.beat:LockedScheduler",
                "--schedule",
                str(self.run_dir / f"celerybeat-schedule-{index}"),
            ],
            env=self.app_env(),
            log_dir=self.log_dir,
        )
        return self.procs[name]

    # --- observability ----------------------------------------------------------------------------

    def write_prometheus_targets(self) -> Path:
        """File service discovery for Prometheus: a target file per job, and the config.

        ``.run/fleet/prometheus/prometheus.yml`` (deploy/prometheus/prometheus-fleet.yml)
        with the alert rules beside it and ``targets/<job>.json``: every node's metrics
        address, labelled with its node name.
        """
        directory = self.run_dir / "prometheus"
        (directory / "targets").mkdir(parents=True, exist_ok=True)
        deploy = ROOT / "deploy" / "prometheus"
        shutil.copy(deploy / "prometheus-fleet.yml", directory / "prometheus.yml")
        shutil.copy(deploy / "alerts.yml", directory / "alerts.yml")
        jobs: dict[str, list[dict]] = {"web": [], "worker-default": [], "worker-webhooks": []}
        for index, port in enumerate(self.web_ports, start=1):
            jobs["web"].append(
                {"targets": [f"127.0.0.1:{port}"], "labels": {"node": f"web-{index}"}}
            )
        for name, port in sorted(self.worker_metrics_ports.items()):
            job = name.rsplit("-", 1)[0]
            jobs[job].append({"targets": [f"127.0.0.1:{port}"], "labels": {"node": name}})
        for job, groups in jobs.items():
            target = directory / "targets" / f"{job}.json"
            tmp = target.with_suffix(".tmp")
            tmp.write_text(json.dumps(groups, indent=2) + "\n")
            tmp.replace(target)  # Prometheus never reads a half-written file
        return directory / "prometheus.yml"

    def summary(self) -> str:
        lines = [f"entry point (nginx)  {self.url}"]
        lines += [
            f"web-{i + 1}                {self.web_url(i + 1)}" for i in range(len(self.web_ports))
        ]
        lines += [
            f"PgBouncer            127.0.0.1:{self.pgbouncer_port} (transaction pooling)",
            f"Redis Cluster        {self.redis_cluster_url}",
            f"broker (Sentinel)    {self.broker_url} master {BROKER_MASTER_NAME}",
            f"payments             http://127.0.0.1:{self.payments_port}",
            f"receiver             http://127.0.0.1:{self.receiver_port}",
            f"Prometheus config    {self.run_dir / 'prometheus' / 'prometheus.yml'}",
            f"logs                 {self.log_dir}",
        ]
        return "\n".join(lines)
