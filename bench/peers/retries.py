"""Retries against a dependency answering 503 to everything: ours, tenacity, stamina, backoff.

Each library retries with the same numbers as the shipped payments policy (3 attempts,
50 ms base, 500 ms cap) and its own documented way of waiting. Printed:

* amplification: calls that reached a loopback HTTP dependency answering 503 per logical
  request, 200 clients released together;
* spread: 1,000 clients failing at the same instant (the moment a dependency starts
  failing, every caller fails together) against an in-process dependency answering 503
  at once; when their retries land, as the most retries in one 10 ms, the median and the
  5-95% span, and as a histogram PNG (docs/peers-retry-spread.png).
"""

from __future__ import annotations

import contextlib
import threading
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
    """When each client's retries are scheduled: the sum of the waits before each one.

    All clients failed at the same instant and the dependency answers at once, so retry
    n of a client lands after its first n waits. The waits are the libraries' own,
    read where each exposes them (tenacity's and our ``sleep``, backoff's ``on_backoff``,
    stamina's retry hook). Wall-clock wake-ups of a thousand threads on two cores would
    add the interpreter's scheduling to every schedule alike and blur them all.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()  # each client is a thread of its own
        self.retries: list[float] = []  # seconds after the client's first attempt

    def waited(self, seconds: float) -> None:
        offset = getattr(self._local, "offset", 0.0) + seconds
        self._local.offset = offset
        with self._lock:
            self.retries.append(offset)

    def sleep(self, seconds: float) -> None:
        """A ``sleep`` for the libraries that take one: records instead of sleeping."""
        self.waited(seconds)


def failing() -> None:
    raise Unavailable(503)


def with_tenacity(call: Callable[[], None], waits: Recorder | None) -> Callable[[], None]:
    import tenacity

    # tenacity's README: exponential backoff, stop after N attempts (no jitter).
    extra = {"sleep": waits.sleep} if waits else {}
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=BASE_S, max=CAP_S),
        retry=tenacity.retry_if_exception_type((Unavailable, requests.RequestException)),
        reraise=True,
        **extra,
    )(call)


def with_stamina(call: Callable[[], None], waits: Recorder | None) -> Callable[[], None]:
    import stamina

    # stamina's defaults (0.1 s initial, 5 s max, up to 1 s added jitter) scaled by 1/2
    # so that its first wait is our 50 ms base. Its waits are read by a retry hook.
    wrapped = stamina.retry(
        on=(Unavailable, requests.RequestException),
        attempts=ATTEMPTS,
        wait_initial=BASE_S,
        wait_max=2.5,
        wait_jitter=0.5,
        timeout=None,
    )(call)
    if waits is None:
        return wrapped

    def hooked() -> None:
        wrapped()

    hooked.hook = lambda details: waits.waited(details.wait_for)  # type: ignore[attr-defined]
    return hooked


def with_backoff(call: Callable[[], None], waits: Recorder | None) -> Callable[[], None]:
    import backoff

    # backoff's README: expo, with its default full jitter.
    extra = {"on_backoff": lambda details: waits.waited(details["wait"])} if waits else {}
    return backoff.on_exception(
        backoff.expo,
        (Unavailable, requests.RequestException),
        max_tries=ATTEMPTS,
        factor=BASE_S,
        max_value=CAP_S,
        logger=None,
        **extra,
    )(call)


def without_retry(call: Callable[[], None], waits: Recorder | None) -> Callable[[], None]:
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
    peak: int  # most retries landing in one 10 ms bin
    retry_p50_ms: float
    retry_span_ms: float  # 5th to 95th percentile of retry times
    arrivals_ms: list[float]  # retries, ms after their client's first attempt


def storm(call: Callable[[], None], clients: int) -> None:
    """``clients`` threads released together, each making one logical request."""
    barrier = threading.Barrier(clients)

    def client() -> None:
        barrier.wait()
        with contextlib.suppress(Exception):  # every logical request fails here
            call()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def spread(retries_s: list[float]) -> tuple[int, float, float, list[float]]:
    """Most retries in one 10 ms, p50 and 5-95% span of the retries, their times in ms."""
    retries = sorted(t * 1000 for t in retries_s)
    if not retries:
        return 0, 0.0, 0.0, []
    bins: dict[int, int] = {}
    for value in retries:
        slot = int(value // (BIN_S * 1000))
        bins[slot] = bins.get(slot, 0) + 1

    def pick(q: float) -> float:
        return retries[min(len(retries) - 1, int(q * len(retries)))]

    return max(bins.values()), pick(0.5), pick(0.95) - pick(0.05), retries


def ours_wrappers():
    """Our client over HTTP, and the same policy around the failing call, waits recorded."""
    import requests as _requests

    from resilience.calls import call
    from resilience.errors import DownstreamHTTPError
    from resilience.http import client, is_retryable

    def over(name: str) -> Callable[[], None]:
        session = client(name)
        return lambda: session.request("GET", "/")

    def around(name: str, waits: Recorder) -> Callable[[], None]:
        answer = _requests.Response()
        answer.status_code = 503

        def attempt(_timeouts: object) -> None:
            raise DownstreamHTTPError(name, answer, retry_after_s=None)

        return lambda: call(name, attempt, retryable=is_retryable, sleep=waits.sleep)

    return over, around


def spread_of(wrapped: Callable[[], None], recorder: Recorder, clients: int) -> None:
    """Run the storm; with stamina's retry hook installed for it when it has one."""
    hook = getattr(wrapped, "hook", None)
    if hook is None:
        storm(wrapped, clients)
        return
    import stamina.instrumentation

    stamina.instrumentation.set_on_retry_hooks([hook])
    try:
        storm(wrapped, clients)
    finally:
        stamina.instrumentation.set_on_retry_hooks(None)


def run(clients: int = CLIENTS, http_clients: int = 200, png: Path | None = PNG) -> list[Result]:
    from bench.peers.ours import fresh_name, peer_dependency

    results = []
    with Dependency() as dep:
        url = dep.url + "/"
        for name, wrap in PEERS.items():
            dep.reset()
            storm(wrap(over_http(url), None), http_clients)
            amplification = dep.calls / http_clients
            recorder = Recorder()
            spread_of(wrap(failing, recorder), recorder, clients)
            results.append(Result(name, amplification, *spread(recorder.retries)))
        retry = {"max_attempts": ATTEMPTS, "base_s": BASE_S, "cap_s": CAP_S}
        for shipped in (False, True):
            drop = () if shipped else ("breaker", "bulkhead")
            label = "ours, as shipped (+ breaker, bulkhead)" if shipped else "ours (retry, budget)"
            with peer_dependency(dep.url, drop=drop, retry=retry):
                over, around = ours_wrappers()
                dep.reset()
                storm(over(fresh_name()), http_clients)
                amplification = dep.calls / http_clients
                recorder = Recorder()
                storm(around(fresh_name(), recorder), clients)
            results.insert(1 + shipped, Result(label, amplification, *spread(recorder.retries)))
    if png is not None:
        histogram(results, png, clients)
    return results


def histogram(results: list[Result], path: Path, clients: int = CLIENTS) -> None:
    """One panel per client, same scales: what the dependency receives per 10 ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in results if r.name != "no retry"]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 1.8 * len(shown)), sharex=True, sharey=True)
    horizon = max((max(r.arrivals_ms) for r in shown if r.arrivals_ms), default=1000)
    bins = [i * BIN_S * 1000 for i in range(int(horizon // (BIN_S * 1000)) + 2)]
    for ax, result in zip(axes, shown, strict=True):
        ax.hist(result.arrivals_ms, bins=bins, color="tab:blue")
        ax.set_ylabel("retries / 10 ms", fontsize=8)
        ax.set_title(
            f"{result.name}: {len(result.arrivals_ms)} retries, at most {result.peak} in one 10 ms",
            fontsize=9,
            loc="left",
        )
    axes[-1].set_xlabel(
        f"ms after each client's first attempt ({clients:,} clients failing at once)"
    )
    fig.suptitle("When the retries reach a dependency answering 503 to everything", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report(results: list[Result]) -> list[str]:
    head = f"{'client':<40} {'calls/request':>13} {'most in 10 ms':>13} {'retry p50':>9}"
    lines = [f"{head} {'retry 5-95%':>11}"]
    for r in results:
        lines.append(
            f"{r.name:<40} {r.calls_per_request:>13.2f} {r.peak:>13}"
            f" {r.retry_p50_ms:>6.0f} ms {r.retry_span_ms:>8.0f} ms"
        )
    return lines
