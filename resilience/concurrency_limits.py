"""The adaptive concurrency limit's algorithms (adr/0010): how the limit follows latency.

Both take one sample per served request (``sample``: the latency of the process's own
part of it, the time it waited on dependencies, and when it was admitted, on the
limiter's clock) and expose the limit in force (``limit``), the last window's own
latency (``short_rtt``) and the reference it is compared with (``long_rtt``):

* ``MinRttGradientLimit`` (the default, ``algorithm: "gradient"``): Envoy's adaptive
  concurrency gradient controller. The reference is the *minimum* RTT, measured now and
  then by pinning the limit to a low concurrency for a few requests; per window,
  ``limit = limit x clamp((minRTT x (1 + buffer)) / sampleRTT, 0.5, 2) + sqrt(limit)``,
  where both RTTs are means (``typical_rtt``) of the process's own part of each
  request: its latency minus what it waited on dependencies (Postgres, providers). A
  slow dependency is not this process's queue, and fewer requests in flight would not
  shorten it: with Postgres 150 ms slower per round trip the whole latency rose from
  30 ms to 3 s, the own part did not rise at all, and counting the whole took the limit
  to its floor and shed 70% of what the unprotected service served (adr/0010). The wait
  is kept (``wait_rtt``) for the dashboard, not followed: weighing the gradient by it
  left the limit too gentle in a CPU overload, where Postgres, on the same cores, is
  slower too.
  The reference is re-measured, never averaged, so a standing overload cannot become
  the new normal (the limit stays where latency is near minRTT), while a latency that
  rose for a reason fewer requests cannot mend (another process taking the CPU) is
  re-measured within one interval, or taken from the live windows once the limit has
  sat at its minimum for 5 of them.
* ``Gradient2Limit`` (``algorithm: "gradient2"``): Netflix concurrency-limits' Gradient2,
  whose reference is a long-term average of the RTT. Kept for comparison: during an
  overload that lasts longer than the average's window, the average rises to the
  overloaded latency and the limit grows back into it (measured in adr/0010).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

ALGORITHMS = ("gradient", "gradient2")  # CONCURRENCY_LIMIT_ALGORITHM
LONG_RTT_WARMUP_WINDOWS = 10
GRADIENT_BOUNDS = (0.5, 2.0)  # Envoy's: halve the limit at most, double it at most
WINDOWS_AT_MINIMUM_BEFORE_REMEASURING = 5  # Envoy's
# The relief test: once the limit has been cut to half of where a dive began, requests
# admitted since the first cut (at least 2 windows' worth) are compared with the window
# that began it. Queueing in the process makes them faster (latency follows what is in
# flight: at least 2x, measured with the GIL); still this slow, the latency came from
# elsewhere (a slow Postgres), and it becomes minRTT instead of the dive going on.
RELIEF_CUT = 0.5
NO_RELIEF_RATIO = 0.8
DIVE_SAMPLES_KEPT = 64
# A new process's first requests pay for lazy imports and new connections (measured: a
# first minRTT of 50 ms against 6 ms a minute later): the first measurement waits.
WARM_UP_REQUESTS = 100


class Limit(Protocol):
    limit: float
    short_rtt: float | None
    long_rtt: float | None
    wait_rtt: float | None

    def sample(self, rtt_s: float, started_s: float, waited_s: float = 0.0) -> None: ...


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank), which must not be empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


RTT_STATISTICS = ("mean", "percentile")  # CONCURRENCY_RTT_STATISTIC


def typical_rtt(latencies: Sequence[float], cfg: Any) -> float:
    """A window's sampleRTT, or a measurement's minRTT: the mean, or rtt_percentile.

    The mean by default. This service's routes differ tenfold in cost (an order creation
    makes about 15 Postgres round trips, a read 3), and its traffic is about half of
    each: the median of such a mix falls on either side by chance, window after window,
    so a median-based gradient halved and doubled the limit at random (postgres-slow:
    a limit swinging between 8 and 23 of 32, 19% of the reads and orders served). The
    mean of the same mix moves only as much as its composition does.
    """
    if cfg.rtt_statistic == "mean":
        return sum(latencies) / len(latencies)
    return percentile(latencies, cfg.rtt_percentile)


class _Windows:
    """Completed requests' latencies, handed over once per window of time and count."""

    def __init__(self, cfg: Any, clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self._clock = clock
        self.started = clock()
        self.latencies: list[float] = []
        self.waits: list[float] = []

    def add(self, rtt_s: float, waited_s: float = 0.0) -> tuple[list[float], float] | None:
        """Record one request; when the window has closed, its own latencies and its mean
        dependency wait, else None."""
        self.latencies.append(rtt_s)
        self.waits.append(waited_s)
        now = self._clock()
        if now - self.started < self.cfg.window_s:
            return None
        if len(self.latencies) < self.cfg.min_window_samples:
            return None
        closed, mean_wait = self.latencies, sum(self.waits) / len(self.waits)
        self.latencies, self.waits, self.started = [], [], now
        return closed, mean_wait

    def restart(self) -> None:
        self.latencies, self.waits, self.started = [], [], self._clock()


class MinRttGradientLimit:
    """Envoy's gradient controller: the limit follows sampleRTT against a measured minRTT."""

    def __init__(
        self,
        cfg: Any,
        *,
        clock: Callable[[], float],
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        self._jitter = jitter
        self._estimate = float(cfg.initial_limit)
        self.min_rtt: float | None = None
        self.short_rtt: float | None = None
        self.wait_rtt: float | None = None
        self._windows = _Windows(cfg, clock)
        self._at_minimum = 0
        self._dive: _Dive | None = None
        # When the limit was last cut, and whether a request admitted since has finished.
        self._cut_at: float | None = None
        self._cut_seen = True
        self.rebased_without_relief = 0
        self._served = 0
        self._next_measurement = clock()
        self._measuring_since: float | None = None
        self._measured: list[float] = []
        self.measurements = 0

    @property
    def measuring(self) -> bool:
        return self._measuring_since is not None

    @property
    def limit(self) -> float:
        """The limit in force: pinned low while minRTT is being measured."""
        if self._measuring_since is not None:
            now = self._clock()
            if now - self._measuring_since < self.cfg.min_rtt_max_s:
                return float(min(self.cfg.min_rtt_concurrency, self._estimate))
            # Time is up even if nothing finished (slots held by requests waiting on a
            # slow dependency): the pin never lasts longer than min_rtt_max_s.
            self._finish_measuring(now)
        return self._estimate

    @property
    def long_rtt(self) -> float | None:
        return self.min_rtt

    def sample(self, rtt_s: float, started_s: float, waited_s: float = 0.0) -> None:
        now = self._clock()
        if self.min_rtt is None and self._served < WARM_UP_REQUESTS:
            self._served += 1
            return  # warming up: the limit stays where it started
        if self._measuring_since is None and now >= self._next_measurement:
            self._start_measuring(now)  # this request ran above the pin: not a sample
            return
        if self._measuring_since is not None:
            # Only requests admitted under the pin: the others ran beside many more.
            if started_s >= self._measuring_since:
                self._measured.append(rtt_s)
            done = len(self._measured) >= self.cfg.min_rtt_requests
            if done or now - self._measuring_since >= self.cfg.min_rtt_max_s:
                self._finish_measuring(now)
            return
        if self._dive is not None and started_s >= self._dive.since:
            self._dive.after.append(rtt_s)
        if self._cut_at is not None and started_s >= self._cut_at:
            self._cut_seen = True
        window = self._windows.add(rtt_s, waited_s)
        if window is not None and self.min_rtt is not None:
            latencies, mean_wait = window
            self._update(typical_rtt(latencies, self.cfg), mean_wait, now)

    def _start_measuring(self, now: float) -> None:
        self._measuring_since = now
        self._measured = []

    def _finish_measuring(self, now: float) -> None:
        # Whatever finished under the pin counts, however few: on a node made slow for
        # everyone (Postgres 50 ms slower per round trip) a second holds only a few
        # requests, and keeping the old reference then held the limit at its floor,
        # measuring again and again, while the queue budgets shed 90% of the reads
        # (postgres-slow). Only when nothing finished does the reference stay.
        if self._measured:
            self.min_rtt = typical_rtt(self._measured, self.cfg)
            self.measurements += 1
        self._measuring_since = None
        self._measured = []
        self._at_minimum = 0
        self._dive = None
        self._cut_seen = True
        self._windows.restart()
        if self.min_rtt is None:
            return  # nothing measured yet (no request finished): measure again at once
        # Jittered, so the processes of a fleet do not all pin their limits together.
        spread = self.cfg.min_rtt_interval_s * self.cfg.min_rtt_jitter * self._jitter()
        self._next_measurement = now + self.cfg.min_rtt_interval_s + spread

    def _update(self, sample_rtt: float, mean_wait: float, now: float) -> None:
        cfg = self.cfg
        self.short_rtt, self.wait_rtt = sample_rtt, mean_wait
        reference = self.min_rtt * (1 + cfg.min_rtt_buffer)
        low, high = GRADIENT_BOUNDS
        gradient = max(low, min(high, reference / max(sample_rtt, 1e-6)))
        if gradient < 1 and not self._cut_seen:
            # At most one cut per round trip, as TCP cuts its window: until a request
            # admitted after the last cut has finished, the windows only hold requests
            # admitted before it, and cutting again on them is cutting on old news (with
            # Postgres 50 ms slower per round trip, four cuts took the limit from the
            # threads to the floor before the first request admitted under a cut was back).
            self._relief_test(sample_rtt, now, cut_from=None)
            return
        scaled = self._estimate * gradient
        before = self._estimate
        self._estimate = max(
            float(cfg.min_limit), min(float(cfg.max_limit), scaled + math.sqrt(scaled))
        )
        cut_from = before if self._estimate < before else None
        if cut_from is not None:
            self._cut_at, self._cut_seen = now, False
        if self._relief_test(sample_rtt, now, cut_from=cut_from):
            return
        # A limit held at its floor may be chasing a reference that no longer holds
        # (the node got slower for everyone). Envoy measures minRTT again then; at the
        # floor the live windows already run at about the pin's concurrency, so their
        # latency is the measurement, taken the way sampleRTT is. (A pinned measurement
        # cut short by its second keeps only the requests that finished in it, the fast
        # ones: in postgres-slow that reference was the reads' latency, the windows held
        # the order creations too, and the limit went straight back to its floor.)
        at_minimum = math.floor(self._estimate) <= cfg.min_limit  # the limit in force
        self._at_minimum = self._at_minimum + 1 if at_minimum else 0
        if self._at_minimum >= WINDOWS_AT_MINIMUM_BEFORE_REMEASURING:
            self.min_rtt = sample_rtt
            self.measurements += 1
            self._at_minimum = 0

    def _relief_test(self, sample_rtt: float, now: float, *, cut_from: float | None) -> bool:
        """Did cutting the limit make requests faster? True when it did not, and the
        latency they still take became minRTT (the limit then grows back at once).

        Envoy's answer to a latency that fewer requests cannot mend is the floor and a
        new measurement (kept below): in postgres-slow the dive from the threads to the
        floor, 5 windows there and the way back took 6 s, shedding a third of what the
        unprotected service served. Only requests admitted after the first cut count:
        those that finish just after it ran beside all the others. ``cut_from``: the
        limit before this window cut it (None: no cut).
        """
        dive = self._dive
        if dive is None:
            if cut_from is not None:
                self._dive = _Dive(since=now, from_limit=cut_from, rtt=sample_rtt)
            return False
        if self._estimate >= dive.from_limit:
            self._dive = None  # back up without a test: the dive is over
            return False
        cut = self._estimate <= RELIEF_CUT * dive.from_limit
        if not cut or len(dive.after) < 2 * self.cfg.min_window_samples:
            return False
        self._dive = None
        admitted_lower = typical_rtt(dive.after, self.cfg)
        if admitted_lower < NO_RELIEF_RATIO * dive.rtt:
            return False  # relief: the process was queueing, the cut was right
        self.min_rtt = admitted_lower
        self.measurements += 1
        self.rebased_without_relief += 1
        self._at_minimum = 0
        return True


class _Dive:
    """A run of cuts of the limit: when it began, from where, at what latency, and the
    latencies of the requests admitted since."""

    def __init__(self, *, since: float, from_limit: float, rtt: float) -> None:
        self.since = since
        self.from_limit = from_limit
        self.rtt = rtt
        # The latest only: a limit that hovers just below where it dipped keeps a dive open.
        self.after: deque[float] = deque(maxlen=DIVE_SAMPLES_KEPT)


class Gradient2Limit:
    """Netflix's Gradient2: the limit follows the ratio of long-term to recent latency."""

    def __init__(self, cfg: Any, *, clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.limit = float(cfg.initial_limit)
        self.long_rtt: float | None = None
        self.short_rtt: float | None = None
        self.wait_rtt: float | None = None
        self._windows = _Windows(cfg, clock)
        self._long_count = 0

    def sample(self, rtt_s: float, started_s: float, waited_s: float = 0.0) -> None:
        """One completed request; moves the limit once per window of samples. It follows
        the same own latency as the minRTT gradient, so the two compare on one signal."""
        window = self._windows.add(rtt_s, waited_s)
        if window is not None:
            latencies, self.wait_rtt = window
            self._update(sum(latencies) / len(latencies))

    def _update(self, short: float) -> None:
        cfg = self.cfg
        self.short_rtt = short
        self._long_count += 1
        if self.long_rtt is None:
            self.long_rtt = short
        elif self._long_count <= LONG_RTT_WARMUP_WINDOWS:
            # Warm-up: a plain mean of the first windows, as Netflix's ExpAvgMeasurement.
            self.long_rtt += (short - self.long_rtt) / self._long_count
        else:
            factor = 2 / (cfg.long_window_samples + 1)
            self.long_rtt = self.long_rtt * (1 - factor) + short * factor
        if self.long_rtt / short > 2:
            # Latency fell far below the long average (an overload ended): forget faster.
            self.long_rtt *= 0.95
        # Netflix does not grow a limit the traffic is not using; ours is bounded by the
        # threads, so it may grow back at light load too (else a limit shrunk by a spike
        # stays low while light traffic never fills half of it, and bursts are shed).
        gradient = max(0.5, min(1.0, cfg.tolerance * self.long_rtt / short))
        # The queue allowance shrinks with the limit (at most queue_size, else its square
        # root): a fixed 4 holds the limit at 8 or more whatever the latency (the fixed
        # point of limit x 0.5 + 4), too many on a node whose processes each run one
        # Python thread at a time.
        target = self.limit * gradient + min(cfg.queue_size, math.sqrt(self.limit))
        smoothed = self.limit * (1 - cfg.smoothing) + target * cfg.smoothing
        self.limit = max(float(cfg.min_limit), min(float(cfg.max_limit), smoothed))


def build(cfg: Any, clock: Callable[[], float]) -> Limit:
    """The configured algorithm."""
    if cfg.algorithm == "gradient2":
        return Gradient2Limit(cfg, clock=clock)
    return MinRttGradientLimit(cfg, clock=clock)
