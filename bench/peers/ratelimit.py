"""Rate limiters side by side at one policy (100 requests/s per client IP): our GCRA bucket
(burst 100), ``limits`` moving and fixed windows (the engine of slowapi), django-ratelimit.

Two gunicorn servers (one process each) share the limiters' store: a redis-server of the
benchmark's own on a free port. Measured per limiter:

1. accuracy: admitted requests, from both servers at once, against what the policy
   promises over the run (GCRA: burst + rate x seconds; windows: limit x windows begun);
2. throughput with a never-refusing limit, against the same view unlimited (median of
   interleaved rounds);
3. what clients get once that redis-server is killed (served, refused, or 5xx).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import LoadResult, run_load
from bench.peers.servers import peer_server
from chaos.commands import redis_server_command
from tests.processes import free_port, http_request, running, wait_for

RATE = 100
BURST = 100
CONCURRENCY = 8  # per server
ACCURACY_S = 5.0
THROUGHPUT_S = 1.0
ROUNDS = 3
DOWN_REQUESTS = 200
LIMITERS = {
    "ours": "ours: GCRA bucket (fail open)",
    "ours-closed": "ours: GCRA bucket (fail closed)",
    "limits-moving": "limits: Redis moving window",
    "limits-fixed": "limits: Redis fixed window",
    "django-ratelimit": "django-ratelimit (cache, fixed)",
}
# Refusals. django-ratelimit's Ratelimited is a PermissionDenied: plain DRF answers it
# with 403; this project's exception handler (common/) turns it into 429.
REFUSED = {429, 403, 503}


@dataclass
class Row:
    name: str
    admitted: int = 0
    expected: float = 0.0
    refused_as: str = ""
    throughput_ratio: float = 0.0  # never-refusing limit / unlimited, median of rounds
    down: str = ""
    down_p50_ms: float = 0.0


def expected(limiter: str, seconds: float) -> float:
    """What the policy promises over ``seconds``: GCRA burst + rate x t; a window limiter
    the limit per whole window (a fixed window may admit up to one window more around a
    boundary: that excess is the inaccuracy measured)."""
    if limiter.startswith("ours"):
        return BURST + RATE * seconds
    return RATE * math.ceil(seconds)


def both(urls: list[str], seconds: float) -> tuple[LoadResult, float, float]:
    results: list[LoadResult] = []
    lock = threading.Lock()

    def one(url: str) -> None:
        result = run_load(url, concurrency=CONCURRENCY, duration_s=seconds)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one, args=(url,)) for url in urls]
    start = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    end = time.time()
    merged = LoadResult()
    for result in results:
        merged.statuses.update(result.statuses)
        merged.latencies_s.extend(result.latencies_s)
        merged.errors += result.errors
    merged.wall_s = end - start
    return merged, start, end


def when_down(url: str, count: int) -> tuple[str, float]:
    statuses: Counter = Counter()
    latencies = []
    for _ in range(count):
        answer = http_request("GET", url, timeout=10)
        statuses[answer.status] += 1
        latencies.append(answer.elapsed_s)
    served = statuses[200]
    refused = sum(statuses[s] for s in REFUSED)
    errors = sum(n for s, n in statuses.items() if s >= 500 and s not in REFUSED) + statuses[0]
    if served == count:
        verdict = "fail open"
    elif errors == count:
        verdict = "5xx"
    elif refused == count:
        verdict = "fail closed"
    elif served and refused and not errors:
        verdict = "fail open, limited per process"
    else:
        verdict = "mixed"
    detail = ", ".join(f"{n}x{s}" for s, n in sorted(statuses.items()))
    return f"{verdict} ({detail})", sorted(latencies)[len(latencies) // 2] * 1000


def run(*, accuracy_s: float = ACCURACY_S, throughput_s: float = THROUGHPUT_S) -> list[Row]:
    rows = {name: Row(label) for name, label in LIMITERS.items()}
    with tempfile.TemporaryDirectory(prefix="bench-peers-rl-") as tmp:
        workdir = Path(tmp)
        redis_port = free_port()
        store = running(
            redis_server_command(port=redis_port, workdir=workdir),
            env={},
            log_path=workdir / "redis.log",
        )
        with store as redis_process:
            wait_for(
                lambda: (workdir / "redis.log").read_text().find("Ready to accept") >= 0,
                timeout=10,
                what="the limiters' redis-server",
            )
            env = {
                "PEERS_LIMIT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "PEERS_KEY_PREFIX": f"peers-{uuid.uuid4().hex[:8]}",
            }
            with (
                peer_server(workdir, label="rl-a", workers=1, **env) as a,
                peer_server(workdir, label="rl-b", workers=1, **env) as b,
            ):
                for name, row in rows.items():
                    path = f"/peers/rl/{name}"
                    result, _, _ = both([a + path, b + path], accuracy_s)
                    row.admitted = result.statuses[200]
                    row.expected = expected(name, accuracy_s)
                    row.refused_as = ",".join(
                        str(s) for s in sorted(REFUSED & set(result.statuses))
                    )
                ratios: dict[str, list[float]] = {name: [] for name in rows}
                for _ in range(ROUNDS):  # interleaved, so each pair sees the same noise
                    for name in rows:
                        plain = run_load(
                            a + "/peers/rl/plain", concurrency=CONCURRENCY, duration_s=throughput_s
                        )
                        limited = run_load(
                            a + f"/peers/rl/{name}/never",
                            concurrency=CONCURRENCY,
                            duration_s=throughput_s,
                        )
                        ratios[name].append(limited.rps / plain.rps if plain.rps else 0.0)
                for name, row in rows.items():
                    row.throughput_ratio = statistics.median(ratios[name])
                redis_process.kill()
                redis_process.wait(10)
                for name, row in rows.items():
                    row.down, row.down_p50_ms = when_down(a + f"/peers/rl/{name}", DOWN_REQUESTS)
    return list(rows.values())


def report(rows: list[Row], *, accuracy_s: float = ACCURACY_S) -> list[str]:
    head = f"{'limiter':<34} {'admitted/expected':>19} {'refusal':>7} {'throughput':>11}"
    lines = [f"{head}  when its Redis is gone ({DOWN_REQUESTS} requests)"]
    for r in rows:
        lines.append(
            f"{r.name:<34} {r.admitted:>6}/{r.expected:<6.0f} {r.admitted / r.expected:>5.2f}"
            f" {r.refused_as:>7} {r.throughput_ratio:>10.2f}x  {r.down}, p50 {r.down_p50_ms:.1f} ms"
        )
    lines.append(
        f"(policy {RATE}/s per IP, ours with burst {BURST}; {accuracy_s:.0f} s from two"
        f" servers x {CONCURRENCY} clients; throughput = never-refusing limit / unlimited,"
        f" median of {ROUNDS} interleaved rounds)"
    )
    return lines
