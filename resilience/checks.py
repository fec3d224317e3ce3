"""Start-up checks: every ``RESILIENCE`` dependency policy is known, complete and safe,
and every bulkhead is sized so that it can fill (adr/0007)."""

from __future__ import annotations

import math

from django.conf import settings
from django.core.checks import Error, register

from resilience.policies import (
    DependencyPolicy,
    PolicyError,
    build_dependency_policy,
    declared_dependencies,
)

TOP_LEVEL_KEYS = {
    "request_deadline_s",
    "breaker_state_redis_url",
    "breaker_state_cache_s",
    "probes",
    "dependencies",
    "process_concurrency",
    "bulkhead_reserved_share",
    "server_timing",
}


def _dependencies_named_in_code() -> frozenset[str]:
    """The library's own and what the apps declared (importing the URL conf loads them)."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018 - loads the views and the services they use
    return declared_dependencies()


@register()
def check_resilience_settings(app_configs, **kwargs) -> list[Error]:
    config = getattr(settings, "RESILIENCE", None)
    if not isinstance(config, dict):
        return [Error("settings.RESILIENCE must be a dict.", id="resilience.E001")]
    errors = [
        Error(f"Unknown RESILIENCE key {key!r}.", hint="Check the spelling.", id="resilience.E002")
        for key in sorted(set(config) - TOP_LEVEL_KEYS)
    ]
    deadline = config.get("request_deadline_s")
    if not isinstance(deadline, int | float) or not 0 < deadline <= 60:
        errors.append(
            Error(
                "RESILIENCE['request_deadline_s'] must be within (0, 60] s.", id="resilience.E003"
            )
        )
    dependencies = config.get("dependencies", {})
    errors += [
        Error(f"RESILIENCE has no policy for {name!r}, which the code calls.", id="resilience.E004")
        for name in sorted(_dependencies_named_in_code() - set(dependencies))
    ]
    policies = []
    for name, raw in dependencies.items():
        try:
            policies.append(build_dependency_policy(name, raw))
        except PolicyError as exc:
            errors.append(Error(f"RESILIENCE dependency {exc}", id="resilience.E005"))
    return errors + bulkhead_sizing_errors(
        policies, config.get("process_concurrency", {}), config.get("bulkhead_reserved_share", 0.5)
    )


def bulkhead_sizing_errors(
    policies: list[DependencyPolicy], concurrency: dict[str, int], reserved_share: float
) -> list[Error]:
    """A bulkhead isolates only if it can fill before the process that holds it does.

    Each bulkhead must be smaller than the concurrency of one process of its kind
    (``runs_in``): threads of a web process, children of a worker node. The process-scoped
    bulkheads of one kind, together, must leave ``reserved_share`` of that concurrency
    to everything else, so that every slow dependency at once still leaves room for reads.
    A fleet-scoped bulkhead is compared with one node (the smallest fleet it can fill).
    """
    errors: list[Error] = []
    if not 0 <= reserved_share < 1:
        message = "RESILIENCE['bulkhead_reserved_share'] must be within [0, 1)."
        return [Error(message, id="resilience.E006")]
    held: dict[str, int] = {}
    for policy in policies:
        bulkhead = policy.bulkhead
        if bulkhead is None:
            continue
        available = concurrency.get(bulkhead.runs_in)
        if not isinstance(available, int) or available < 1:
            errors.append(
                Error(
                    f"{policy.name}.bulkhead.runs_in={bulkhead.runs_in!r} names no process kind"
                    f" of RESILIENCE['process_concurrency'] ({sorted(concurrency)}).",
                    id="resilience.E007",
                )
            )
            continue
        if bulkhead.max_concurrent >= available:
            errors.append(
                Error(
                    f"{policy.name}.bulkhead.max_concurrent={bulkhead.max_concurrent} is not"
                    f" smaller than the {available} concurrent requests or tasks of a"
                    f" {bulkhead.runs_in!r} process: it can never fill, so a slow"
                    f" {policy.name} would take the whole process.",
                    hint="Lower the bulkhead or raise the process's threads/concurrency.",
                    id="resilience.E008",
                )
            )
        if bulkhead.scope == "process":
            held[bulkhead.runs_in] = held.get(bulkhead.runs_in, 0) + bulkhead.max_concurrent
    for kind, total in sorted(held.items()):
        allowed = math.floor(concurrency[kind] * (1 - reserved_share))
        if total > allowed:
            errors.append(
                Error(
                    f"The bulkheads of a {kind!r} process hold {total} of its"
                    f" {concurrency[kind]} slots together; at most {allowed} leave"
                    f" {reserved_share:.0%} to everything else.",
                    hint="Lower the bulkheads or raise the process's threads.",
                    id="resilience.E009",
                )
            )
    return errors


def refuse_to_start_on_errors() -> None:
    """Run the system checks; raise ``SystemCheckError`` when any is an error.

    gunicorn and Celery do not run Django's checks at start-up (only ``manage.py``
    commands do), so their start hooks call this: a bulkhead that could never fill, or
    an unsafe policy, stops the process before it serves anything.
    """
    from django.core.management import call_command

    call_command("check", fail_level="ERROR")


@register()
def check_concurrency_settings(app_configs, **kwargs) -> list[Error]:
    """``RESILIENCE_CONCURRENCY``: a known mode, sane bounds, shares that fit the limit."""
    from resilience.concurrency import PRIORITIES
    from resilience.concurrency_limits import ALGORITHMS, RTT_STATISTICS
    from resilience.request_queue import ORDERS as QUEUE_ORDERS

    raw = getattr(settings, "RESILIENCE_CONCURRENCY", None)
    if not isinstance(raw, dict):
        return [Error("settings.RESILIENCE_CONCURRENCY must be a dict.", id="resilience.E010")]
    problems = [
        f"{key} must be one of {list(known)}, not {value!r}"
        for key, value, known in (
            ("mode", raw.get("mode"), ("adaptive", "static")),
            ("algorithm", raw.get("algorithm"), ALGORITHMS),
            (
                "gradient.rtt_statistic",
                raw.get("gradient", {}).get("rtt_statistic"),
                RTT_STATISTICS,
            ),
            ("default_priority", raw.get("default_priority"), PRIORITIES),
            (
                "standing_queue.thread_queue",
                raw.get("standing_queue", {}).get("thread_queue"),
                QUEUE_ORDERS,
            ),
        )
        if value not in known
    ]
    min_rtt = raw.get("min_rtt", {})
    if not (
        min_rtt.get("interval_s", 0) > min_rtt.get("max_s", 0) > 0
        and isinstance(min_rtt.get("requests"), int)
        and min_rtt["requests"] >= 1
        and isinstance(min_rtt.get("concurrency"), int)
        and min_rtt["concurrency"] >= 1
        and min_rtt.get("buffer", -1) >= 0
        and 0 <= min_rtt.get("jitter", -1) <= 1
    ):
        problems.append(
            "min_rtt needs interval_s > max_s > 0, requests and concurrency of at least 1,"
            " buffer >= 0 and 0 <= jitter <= 1"
        )
    if not 0 < raw.get("gradient", {}).get("rtt_percentile", 0) <= 1:
        problems.append("gradient.rtt_percentile must be in (0, 1]")
    low, start, high = raw.get("min_limit"), raw.get("initial_limit"), raw.get("max_limit")
    if not all(isinstance(v, int) for v in (low, start, high)) or not 1 <= low <= start <= high:
        problems.append("limits must be whole numbers with 1 <= min <= initial <= max")
    if not isinstance(raw.get("static_limit"), int) or raw["static_limit"] < 1:
        problems.append("static_limit must be a whole number of at least 1")
    classes = raw.get("priorities", {})
    if set(classes) != set(PRIORITIES):
        problems.append(f"priorities must be exactly {list(PRIORITIES)}")
    elif sum(c["share"] for c in classes.values()) > 1 + 1e-9:
        problems.append("the priority shares add up to more than the whole limit")
    elif any(not 0 < c["standing_queue_budget_s"] <= c["queue_budget_s"] for c in classes.values()):
        problems.append("every priority needs 0 < standing_queue_budget_s <= queue_budget_s")
    return [Error(f"RESILIENCE_CONCURRENCY: {p}.", id="resilience.E011") for p in problems]
