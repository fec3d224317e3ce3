"""Retries against a dependency answering 503 to everything: ours, tenacity, stamina, backoff.

One thousand clients each make one logical request at the same instant (the moment a
dependency starts failing, every caller fails together). Each library retries with the
same numbers as the shipped payments policy (3 attempts, 50 ms base, 500 ms cap) and its
own documented way of waiting. Printed: calls that reached the dependency per logical
request (amplification) and the spread of the retries in time; written: a histogram PNG
of when the attempts arrived (docs/peers-retry-spread.png).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.peers.dependency import Dependency

ROOT = Path(__file__).resolve().parents[2]
PNG = ROOT / "docs" / "peers-retry-spread.png"
CLIENTS = 1000
ATTEMPTS = 3
BASE_S = 0.05
CAP_S = 0.5
TIMEOUT_S = (0.25, 1.0)  # payments' connect and read timeouts
BIN_S = 0.01


class Unavailable(Exception):
    """The dependency answered 5xx."""


def over_http(url: str) -> Callable[[], None]:
    """One call to the loopback dependency; a 5xx raises :class:`Unavailable`."""

    def call() -> None:
        response = requests.get(url, timeout=TIMEOUT_S)
        if response.status_code >= 500:
            raise Unavailable(response.status_code)

    return call


class Recorder:
    """An in-process dependency answering 503 at once: records when each call came.

    The spread of a thousand clients is a property of the retry schedule; a loopback
    server on two shared cores would queue them and blur it, so the histogram uses this.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()  # each client is a thread of its own
        self.retries: list[float] = []  # when attempts 2, 3, ... came

    def hit(self) -> None:
        now = time.monotonic()
        attempt = getattr(self._local, "attempt", 0) + 1
        self._local.attempt = attempt
        if attempt > 1:
            with self._lock:
                self.retries.append(now)

    def call(self) -> None:
        self.hit()
        raise Unavailable(503)


def with_tenacity(call: Callable[[], None]) -> Callable[[], None]:
    import tenacity

    # tenacity's README: exponential backoff, stop after N attempts (no jitter).
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=BASE_S, max=CAP_S),
        retry=tenacity.retry_if_exception_type((Unavailable, requests.RequestException)),
        reraise=True,
    )(call)


def with_stamina(call: Callable[[], None]) -> Callable[[], None]:
    import stamina

    # stamina's defaults (0.1 s initial, 5 s max, up to 1 s added jitter) scaled by 1/2
    # so that its first wait is our 50 ms base.
    return stamina.retry(
        on=(Unavailable, requests.RequestException),
        attempts=ATTEMPTS,
        wait_initial=BASE_S,
        wait_max=2.5,
        wait_jitter=0.5,
        timeout=None,
    )(call)


def with_backoff(call: Callable[[], None]) -> Callable[[], None]:
    import backoff

    # backoff's README: expo, with its default full jitter.
    return backoff.on_exception(
        backoff.expo,
        (Unavailable, requests.RequestException),
        max_tries=ATTEMPTS,
        factor=BASE_S,
        max_value=CAP_S,
        logger=None,
    )(call)


def without_retry(call: Callable[[], None]) -> Callable[[], None]:
    return call


PEERS = {
    "no retry": without_retry,
    "tenacity (README: wait_exponential)": with_tenacity,
    "stamina (defaults, times x 1/2)": with_stamina,
    "backoff (expo, default full_jitter)": with_backoff,
}


@dataclass
class Result:
    name: str
    calls_per_request: float  # over HTTP
    peak_share: float  # largest share of the retries landing in one 10 ms bin
    retry_p50_ms: float
    retry_span_ms: float  # 5th to 95th percentile of retry times
    arrivals_ms: list[float]  # retries, ms after the clients were released


def storm(call: Callable[[], None], clients: int) -> float:
    """``clients`` threads released together, each making one logical request.

    Returns the instant they were released (``time.monotonic()``).
    """
    released: list[float] = []
    barrier = threading.Barrier(clients, action=lambda: released.append(time.monotonic()))

    def client() -> None:
        barrier.wait()
        with contextlib.suppress(Exception):  # every logical request fails here
            call()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return released[0] if released else time.monotonic()


def spread(retries_at: list[float], t0: float) -> tuple[float, float, float, list[float]]:
    """Peak 10 ms share, p50 and 5-95% span of the retries, and their times in ms from t0."""
    retries = sorted((t - t0) * 1000 for t in retries_at)
    if not retries:
        return 0.0, 0.0, 0.0, []
    bins: dict[int, int] = {}
    for value in retries:
        slot = int(value // (BIN_S * 1000))
        bins[slot] = bins.get(slot, 0) + 1

    def pick(q: float) -> float:
        return retries[min(len(retries) - 1, int(q * len(retries)))]

    return max(bins.values()) / len(retries), pick(0.5), pick(0.95) - pick(0.05), retries


def ours_wrappers(dep_url: str, *, shipped: bool):
    """Our client over HTTP, and the same policy around the in-process recorder."""
    import requests as _requests

    from resilience.calls import call
    from resilience.http import DownstreamHTTPError, client, is_retryable

    def over(name: str) -> Callable[[], None]:
        session = client(name)
        return lambda: session.request("GET", "/")

    def around(name: str, recorder: Recorder) -> Callable[[], None]:
        answer = _requests.Response()
        answer.status_code = 503

        def attempt(_timeouts: object) -> None:
            recorder.hit()
            raise DownstreamHTTPError(name, answer)

        return lambda: call(name, attempt, retryable=is_retryable)

    return over, around


def run(clients: int = CLIENTS, http_clients: int = 200, png: Path | None = PNG) -> list[Result]:
    from bench.peers.ours import fresh_name, peer_dependency

    results = []
    with Dependency() as dep:
        url = dep.url + "/"
        for name, wrap in PEERS.items():
            dep.reset()
            storm(wrap(over_http(url)), http_clients)
            amplification = dep.calls / http_clients
            recorder = Recorder()
            t0 = storm(wrap(recorder.call), clients)
            results.append(Result(name, amplification, *spread(recorder.retries, t0)))
        retry = {"max_attempts": ATTEMPTS, "base_s": BASE_S, "cap_s": CAP_S}
        for shipped in (False, True):
            drop = () if shipped else ("breaker", "bulkhead")
            label = "ours, as shipped (+ breaker, bulkhead)" if shipped else "ours (retry, budget)"
            with peer_dependency(dep.url, drop=drop, retry=retry):
                over, around = ours_wrappers(dep.url, shipped=shipped)
                dep.reset()
                storm(over(fresh_name()), http_clients)
                amplification = dep.calls / http_clients
                recorder = Recorder()
                t0 = storm(around(fresh_name(), recorder), clients)
            results.insert(1 + shipped, Result(label, amplification, *spread(recorder.retries, t0)))
    if png is not None:
        histogram(results, png)
    return results


def histogram(spreads: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(spreads), 1, figsize=(9, 1.9 * len(spreads)), sharex=True)
    horizon = max((max(s.arrivals_ms) for s in spreads if s.arrivals_ms), default=1000)
    bins = [i * BIN_S * 1000 for i in range(int(horizon // (BIN_S * 1000)) + 2)]
    for ax, spread in zip(axes, spreads, strict=True):
        ax.hist(spread.arrivals_ms, bins=bins, color="tab:blue")
        ax.set_ylabel("retries / 10 ms", fontsize=8)
        ax.set_title(
            f"{spread.name}: peak {spread.peak_share:.0%} of the retries in one 10 ms",
            fontsize=9,
            loc="left",
        )
    axes[-1].set_xlabel(
        f"ms since the first call ({CLIENTS:,} clients failing at the same instant)"
    )
    fig.suptitle(
        "When the calls reached a dependency answering 503 at once to everything", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(results: list[Result]) -> list[str]:
    head = f"{'client':<40} {'calls/request':>13} {'peak 10 ms':>10} {'retry p50':>9}"
    lines = [f"{head} {'retry 5-95%':>11}"]
    for r in results:
        lines.append(
            f"{r.name:<40} {r.calls_per_request:>13.2f} {r.peak_share:>10.0%}"
            f" {r.retry_p50_ms:>6.0f} ms {r.retry_span_ms:>8.0f} ms"
        )
    return lines
