"""What a scrape exports: every metric, with shared breakers' state read at scrape time.

``resilience_breaker_state`` is a ``livemax`` gauge that each process sets when *it*
sees a transition. A process that saw a breaker open and then made no more calls would
keep reporting it open after the fleet closed it (the breaker's probe ran elsewhere),
and ``CircuitBreakerStuckOpen`` would keep firing. So, for every breaker whose state
is shared in Redis, the scrape replaces the processes' values by the shared state as
Redis holds it now. When Redis cannot answer, the processes' own values stand (each
then runs on its local state anyway). Process-local breakers (``redis``) keep
``livemax``: each process's probe runner closes its own.

Used by the web ``/metrics`` view and the Celery workers' metrics server, in
prometheus_client multiprocess mode or not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import prometheus_client
from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

logger = logging.getLogger(__name__)

STATE_METRIC = "resilience_breaker_state"


def _shared_states(names: set[str]) -> dict[str, int]:
    """The Redis-held state value of each shared breaker among ``names`` (none on error)."""
    from resilience.breaker_state import STATE_VALUES, SharedStateStorage, _shared_state_redis
    from resilience.policies import all_policies, get_policy

    candidates = set(names)
    candidates |= {
        name
        for name, policy in all_policies().items()
        if policy.breaker is not None and name != "webhook"
    }
    states = {}
    for name in sorted(candidates):
        try:
            policy = get_policy(name).breaker
        except KeyError:
            continue
        if policy is None or not policy.shared or name == "redis":
            continue
        state = SharedStateStorage(name, _shared_state_redis).shared_state()
        if state is None:
            continue  # Redis did not answer: keep what the processes report
        states[name] = STATE_VALUES[state]
    return states


def with_shared_breaker_state(family: Metric) -> Metric:
    """``family`` (resilience_breaker_state) with shared breakers' values from Redis."""
    reported = {sample.labels.get("dependency") for sample in family.samples}
    try:
        shared = _shared_states({name for name in reported if name})
    except Exception:
        logger.warning("shared breaker state not read for the scrape", exc_info=True)
        return family
    samples = []
    for sample in family.samples:
        dependency = sample.labels.get("dependency")
        if dependency in shared:
            samples.append(sample._replace(value=float(shared.pop(dependency))))
        else:
            samples.append(sample)
    samples += [
        Sample(STATE_METRIC, {"dependency": name}, float(value)) for name, value in shared.items()
    ]
    family.samples = samples
    return family


class ScrapeCollector:
    """Every family of ``source``, the breaker state one corrected as above."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            yield with_shared_breaker_state(family) if family.name == STATE_METRIC else family


def scrape_registry() -> CollectorRegistry:
    """A registry for one scrape: multiprocess files if configured, else this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        source = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)
    else:
        source = prometheus_client.REGISTRY
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(source))
    return registry


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics`` (replaces django_prometheus's view, which it otherwise equals)."""
    page = prometheus_client.generate_latest(scrape_registry())
    return HttpResponse(page, content_type=prometheus_client.CONTENT_TYPE_LATEST)
