"""What the stack says about itself: /metrics (breakers, counters) and /readyz, over time."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from chaos.scenarios.client import request

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
BREAKER_STATES = {0: "closed", 1: "half-open", 2: "open"}

Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Metrics:
    """Prometheus text format -> {(name, labels): value}; comments and junk are skipped."""
    parsed: Metrics = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        parsed[(name, frozenset(_LABEL.findall(labels or "")))] = number
    return parsed


def metric_sum(metrics: Metrics, name: str, **labels: str) -> float:
    """Sum of every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and wanted <= ls)


def breaker_states(metrics: Metrics) -> dict[str, int]:
    """Dependency -> 0 closed, 1 half-open, 2 open (the max over live processes)."""
    return {
        dict(labels)["dependency"]: int(value)
        for (name, labels), value in metrics.items()
        if name == "resilience_breaker_state" and "dependency" in dict(labels)
    }


def breaker_openings(metrics: Metrics) -> dict[str, float]:
    """Dependency -> transitions to open so far (summed over processes)."""
    opened: dict[str, float] = {}
    for (name, labels), value in metrics.items():
        label = dict(labels)
        if name == "resilience_breaker_transitions_total" and label.get("to_state") == "open":
            dependency = label.get("dependency", "")
            opened[dependency] = opened.get(dependency, 0.0) + value
    return opened


def fetch_metrics(base_url: str) -> Metrics | None:
    answer = request("GET", f"{base_url}/metrics", timeout=5)
    if answer.status != 200 or not isinstance(answer.body, str):
        return None
    return parse_metrics(answer.body)


def fetch_readiness(base_url: str) -> tuple[int, list[str]]:
    """(/readyz status, degraded dependencies)."""
    answer = request("GET", f"{base_url}/readyz", timeout=5)
    body = answer.body if isinstance(answer.body, dict) else {}
    degraded = list(body.get("degraded", []))
    degraded += [
        n for n, c in body.get("checks", {}).items() if not c.get("ok") and n not in degraded
    ]
    return answer.status, degraded


@dataclass
class Observation:
    t: float
    breakers: Mapping[str, int] = field(default_factory=dict)
    ready_status: int = 0
    degraded: list[str] = field(default_factory=list)
    opened: Mapping[str, float] = field(default_factory=dict)  # transitions to open so far
    # The load shedder's limit summed over the web processes (None: not exported).
    concurrency_limit: float | None = None
    # The latencies the limit follows, the highest of the processes', by window
    # (short: the process's own part of the last window's requests; long: the reference;
    # dependency_wait: the window's mean wait on dependencies).
    concurrency_rtt: Mapping[str, float] = field(default_factory=dict)


class Observer:
    """Polls /metrics and /readyz every ``interval`` seconds in a thread."""

    def __init__(self, base_url: str, t0: float, interval: float = 0.5) -> None:
        self.base_url = base_url
        self.t0 = t0
        self.interval = interval
        self.observations: list[Observation] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-observer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def latest(self) -> Observation | None:
        return self.observations[-1] if self.observations else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.observations.append(self.observe())
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def observe(self) -> Observation:
        metrics = fetch_metrics(self.base_url)
        # Stamped when the metrics arrived: a scrape can take seconds in a fault (its
        # gauges query the faulted Postgres), and the state it shows is that late.
        t = time.monotonic() - self.t0
        status, degraded = fetch_readiness(self.base_url)
        if not metrics:
            return Observation(t, {}, status, degraded)
        limit = [v for (name, _), v in metrics.items() if name == "resilience_concurrency_limit"]
        rtt = {
            dict(labels).get("window", ""): v
            for (name, labels), v in metrics.items()
            if name == "resilience_concurrency_rtt_seconds"
        }
        return Observation(
            t,
            breaker_states(metrics),
            status,
            degraded,
            breaker_openings(metrics),
            sum(limit) if limit else None,
            rtt,
        )
