"""Reports of a run: Markdown for people, JSON for tools, a PNG timeline (matplotlib, Agg)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from chaos.scenarios.faults import LoadSpike
from chaos.scenarios.observe import BREAKER_STATES
from chaos.scenarios.runner import (
    RunContext,
    compare_with_baseline,
    percentile,
    slow_after_open_text,
)
from chaos.scenarios.traffic import NOT_SENT, Sample

# Status classes of the timeline, bottom to top, with their colours.
CLASSES = [
    ("2xx", "#2ca02c"),
    ("2xx degraded", "#bcbd22"),
    ("409", "#17becf"),
    ("429", "#9467bd"),
    ("503", "#ff7f0e"),
    ("other 4xx/5xx", "#d62728"),
    ("no answer", "#000000"),
    ("not sent", "#7f7f7f"),
]
BIN_S = 1.0
# A healthy stack answers in tens of milliseconds; a median above this before the fault
# means the machine, not the fault, sets the figures.
SATURATED_P50_S = 0.25


def status_class(sample: Sample) -> str:
    if sample.status == NOT_SENT:
        return "not sent"
    if sample.status == 0:
        return "no answer"
    if sample.status in (200, 201):
        return "2xx degraded" if sample.order_status == "pending_payment" else "2xx"
    if sample.status in (409, 429, 503):
        return str(sample.status)
    return "other 4xx/5xx"


def timeline(ctx: RunContext, bin_s: float = BIN_S) -> dict[str, Any]:
    """Per-bin request rates by status class and latency percentiles."""
    bins: dict[int, list[Sample]] = defaultdict(list)
    for sample in ctx.samples:
        bins[int(sample.t // bin_s)].append(sample)
    last = int(ctx.t_end // bin_s)  # the last, partial bin would look like a drop
    rows = []
    for index in range(last):
        group = bins.get(index, [])
        latencies = [s.latency_s for s in group if s.status != NOT_SENT]
        counts = {name: 0 for name, _ in CLASSES}
        for sample in group:
            counts[status_class(sample)] += 1
        rows.append(
            {
                "t": index * bin_s,
                "rps": {k: v / bin_s for k, v in counts.items()},
                "p50_s": percentile(latencies, 0.5),
                "p99_s": percentile(latencies, 0.99),
            }
        )
    return {"bin_s": bin_s, "bins": rows}


def to_json(ctx: RunContext, baseline: RunContext | None = None) -> dict[str, Any]:
    data = _run_json(ctx)
    if baseline is not None:
        data["baseline"] = _run_json(baseline)
        data["comparison"] = comparison(ctx, baseline)
        if ctx.summary and baseline.summary:
            data["beside_baseline"] = compare_with_baseline(ctx, baseline)
    return data


def _run_json(ctx: RunContext) -> dict[str, Any]:
    return {
        "scenario": ctx.scenario.name,
        "summary_text": ctx.scenario.summary,
        "what_users_see": ctx.scenario.what_users_see,
        "config": ctx.config,
        "verdict": "PASS" if ctx.passed else "FAIL",
        "checks": [c.to_dict() for c in ctx.checks],
        "figures": ctx.summary,
        "timeline": timeline(ctx) if ctx.summary else None,
        "breaker_observations": [asdict(o) for o in ctx.observer.observations],
    }


COMPARED = [
    ("p99 latency during the fault", "p99_fault_s", "ms"),
    ("max latency during the fault", "max_fault_s", "ms"),
    ("failed requests (non-2xx) during the fault", "failed_during_fault", "n"),
    ("failed requests (non-2xx), whole run", "failed", "n"),
    ("answers outside the documented ones", "undocumented", "n"),
    ("failures that waited >= 0.5 s", "slow_failures_during_fault", "n"),
    ("calls reaching the failed dependency", "calls_to_dependency_during_fault", "n"),
    ("orders accepted degraded (pending_payment)", "degraded_orders", "n"),
    ("orders lost", "orders_missing", "n"),
    ("time to recover after heal", "time_to_recover_s", "s"),
]


def _value(value: Any, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{value * 1000:.0f} ms"
    if unit == "s":
        return f"{value:.1f} s"
    return f"{value:.0f}" if isinstance(value, float) else str(value)


def comparison(ctx: RunContext, baseline: RunContext) -> list[dict[str, Any]]:
    return [
        {
            "figure": label,
            "key": key,
            "resilient": ctx.summary.get(key),
            "baseline": baseline.summary.get(key),
        }
        for label, key, _ in COMPARED
    ]


HOW_TO_READ = (
    "The timeline's top panel stacks answers per second by class (green: normal; olive: "
    "documented degraded answer such as `pending_payment`; orange 503, purple 429, cyan 409: "
    "documented refusals with Retry-After; red: undocumented errors; black: no answer). "
    "The middle panel is p50 and p99 latency per second; the bottom one the breaker state "
    "of the faulted dependency from /metrics. The fault window is shaded. See chaos/README.md."
)


def _figures(s: dict[str, Any]) -> list[tuple[str, str]]:
    def v(key: str, unit: str = "n") -> str:
        return _value(s[key], unit)

    return [
        ("requests sent (not sent: client in-flight cap)", f"{s['requests']} ({s['not_sent']})"),
        ("answers by status", str(s["by_status"])),
        ("answers during the fault", str(s["fault_by_status"])),
        ("refusals by problem code, whole run", str(s.get("refusals_by_code", {}))),
        ("shed by the load shedder, by reason", str(s.get("shed_by_reason", {}))),
        ("p50 / p99 before the fault", f"{v('p50_steady_s', 'ms')} / {v('p99_steady_s', 'ms')}"),
        ("p50 / p99 during the fault", f"{v('p50_fault_s', 'ms')} / {v('p99_fault_s', 'ms')}"),
        ("time to recover after heal", v("time_to_recover_s", "s")),
        (
            f"breaker `{s['breaker']}` opened / refused calls",
            f"{v('breaker_opened')} / {v('breaker_refusals')}",
        ),
        ("breaker closed after heal", v("breaker_closed_after_heal_s", "s")),
        ("user requests slow after the breaker first opened", _slow_line(s)),
        ("calls reaching the dependency during the fault", v("calls_to_dependency_during_fault")),
        (
            "payments retries / budget refusals / bulkhead refusals",
            f"{v('retries')} / {v('retry_budget_exhausted')} / {v('bulkhead_rejected')}",
        ),
        (
            "orders confirmed / lost / degraded answers",
            f"{s['orders_confirmed']} / {s['orders_missing']} / {s['degraded_orders']}",
        ),
        (
            "client retries / keys without an order",
            f"{s['client_retries']} / {s['keys_unresolved']}",
        ),
    ]


CLASS_ROWS = [
    ("goodput (2xx answers/s, deferred included)", "goodput_rps", "rate"),
    ("p50", "p50_s", "ms"),
    ("p99", "p99_s", "ms"),
    ("requests sent / not sent (client cap)", ("requests", "not_sent"), "pair"),
    ("served (2xx)", "served", "n"),
    ("deferred (201 pending_payment)", "deferred", "n"),
    ("shed (503 / 429)", ("shed_503", "shed_429"), "pair"),
    ("409 (same key in flight)", "conflicts_409", "n"),
    ("other errors and no answer", "errors", "n"),
]
CLASS_NAMES = {"reads": "reads (GET order, list)", "orders": "order creation (POST)"}


def _class_value(figures: dict[str, Any], key: Any, unit: str) -> str:
    if unit == "pair":
        return " / ".join(str(figures[k]) for k in key)
    if unit == "rate":
        return f"{figures[key]:.1f}/s"
    return _value(figures[key], unit)


def _class_table(ctx: RunContext, baseline: RunContext | None) -> list[str]:
    """Per endpoint class during the fault; the baseline beside it when there is one."""
    ours = ctx.summary["classes"]
    theirs = baseline.summary["classes"] if baseline is not None and baseline.summary else None
    lines = ["", "## Per endpoint class, during the fault", ""]
    if theirs is None:
        lines += ["| figure | reads | order creation |", "|---|---|---|"]
        for label, key, unit in CLASS_ROWS:
            values = [_class_value(ours[c], key, unit) for c in ("reads", "orders")]
            lines.append(f"| {label} | {' | '.join(values)} |")
        return lines
    lines += ["| class | figure | resilient | baseline |", "|---|---|---|---|"]
    for name in ("reads", "orders"):
        for label, key, unit in CLASS_ROWS:
            mine = _class_value(ours[name], key, unit)
            other = _class_value(theirs[name], key, unit)
            lines.append(f"| {CLASS_NAMES[name]} | {label} | {mine} | {other} |")
    return lines


PHASE_NAMES = {"before": "before the spike", "spike": "during the spike", "after": "after it"}


def _priority_table(ctx: RunContext, baseline: RunContext | None) -> list[str]:
    """Per priority class (load shedding), before, during and after a load spike."""
    runs = [("resilient", ctx.summary["priorities"])]
    if baseline is not None and baseline.summary.get("priorities"):
        runs.append(("baseline", baseline.summary["priorities"]))
    lines = [
        "",
        "## Per priority class (goodput: answers within 2 s)",
        "",
        "| run | phase | class | requests | goodput | p50 | p99 | shed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, phases in runs:
        for phase, figures in phases.items():
            for level, f in figures.items():
                lines.append(
                    f"| {run} | {PHASE_NAMES.get(phase, phase)} | {level} | {f['requests']} "
                    f"| {f['goodput_rps']:.1f}/s | {_value(f['p50_s'], 'ms')} "
                    f"| {_value(f['p99_s'], 'ms')} | {f['shed']} ({f['shed_share']:.0%}) |"
                )
    return lines


def _client_load_table(load: dict[str, Any]) -> list[str]:
    """The storm's naive clients beside the good client: requests per logical operation."""
    from chaos.scenarios.good_client import ClientLoad, comparison_lines

    def as_load(raw: dict[str, Any]) -> ClientLoad:
        return ClientLoad(
            raw["name"], raw["operations"], raw["requests"], raw["succeeded"], raw["statuses"]
        )

    title = "## Load each client puts on the server during the fault"
    return ["", title, "", *comparison_lines(as_load(load["naive"]), as_load(load["good"]))]


def _slow_line(s: dict[str, Any]) -> str:
    slow = s["slow_after_open"]
    if slow["count"] is None:
        return f"not counted ({slow['source']})"
    opened = s["breaker_first_open_s"] - s["t_inject"]
    return f"{slow_after_open_text(slow)}; the breaker first opened {opened:.1f} s into the fault"


def _beside(ctx: RunContext, baseline: RunContext) -> list[str]:
    found = compare_with_baseline(ctx, baseline)

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}x"

    lines = [
        "",
        "| beside the baseline | value |",
        "|---|---|",
        f"| baseline p99 / resilient p99, all requests | {ratio(found['p99_ratio'])} |",
    ]
    for name, figures in found["classes"].items():
        lines.append(f"| baseline p99 / resilient p99, {name} | {ratio(figures['p99_ratio'])} |")
    for name, figures in found["classes"].items():
        mine = figures["served_share_resilient"]
        other = figures["served_share_baseline"]
        if mine is None or other is None:
            continue
        answer = "yes" if figures["baseline_failed_what_resilient_served"] else "no"
        per = " of the orders placed (one per key, retries included)" if name == "orders" else ""
        lines.append(
            f"| baseline failed {name} the resilient run served | {answer} "
            f"(served {mine:.0%} resilient, {other:.0%} baseline{per}) |"
        )
    lines.append(
        "| requests slower than their healthy p99 + the slow-call threshold after the "
        "breaker first opened, as the client saw them "
        f"| {found['slow_after_open_resilient_client']} resilient, "
        f"{found['slow_after_open_baseline']} baseline (same offset: no breaker there) |"
    )
    return lines


def markdown(ctx: RunContext, baseline: RunContext | None = None, *, command: str = "") -> str:
    sc, s = ctx.scenario, ctx.summary
    cfg = ctx.config
    mix = (
        ", ".join(f"{share:.0%} {op}" for op, share in sc.mix.items())
        if sc.mix
        else f"{sc.create_share:.0%} POST /api/v1/orders with Idempotency-Key, the rest GETs"
    )
    traffic = (
        f"{cfg['rps']:g} requests/s, open loop, from {cfg['users']} users on as many "
        f"loopback addresses (up to 250) ({mix}); "
        f"steady {cfg['steady_s']:g} s, fault {cfg['duration_s']:g} s"
    )
    lines = [
        f"# Chaos experiment: {sc.name}",
        "",
        f"**Verdict: {'PASS' if ctx.passed else 'FAIL'}**: {sc.summary}.",
        "",
        f"- Fault: {sc.fault.description}",
        f"- What users should see: {sc.what_users_see}",
        f"- Stack: {cfg['stack']}; RESILIENCE_ENABLED={cfg['resilience_enabled']}",
        f"- Traffic: {traffic}",
        f"- Load: {cfg['load']['description']}",
    ]
    if s and (s.get("p50_pre_fault_s") or 0) > SATURATED_P50_S:
        lines.append(
            f"- NOTE: p50 {s['p50_pre_fault_s'] * 1000:.0f} ms in the 2 s before the fault: "
            "the stack was "
            "saturated before anything failed (this machine cannot serve the load; lower "
            "--max-rps), so the figures measure CPU more than the fault"
        )
    if command:
        lines.append(f"- Command: `{command}`")
    lines += ["", "## Checks", "", "| check | result | detail |", "|---|---|---|"]
    for check in ctx.checks:
        result = {True: "pass", False: "**FAIL**", None: "skipped"}[check.passed]
        lines.append(f"| {check.name} | {result} | {check.detail} |")
    if s:
        lines += _class_table(ctx, baseline)
        if s.get("priorities"):
            lines += _priority_table(ctx, baseline)
        if baseline is not None and baseline.summary:
            lines += _beside(ctx, baseline)
        if s.get("client_load"):
            lines += _client_load_table(s["client_load"])
        lines += ["", "## Figures", "", "| figure | value |", "|---|---|"]
        lines += [f"| {label} | {value} |" for label, value in _figures(s)]
        lines += ["", "![timeline](timeline.png)"]
    if baseline is not None:
        verdict = "PASS" if baseline.passed else "FAIL"
        lines += [
            "",
            "## Baseline: the same fault with RESILIENCE_ENABLED=false",
            "",
            (
                f"Baseline verdict: {verdict} (the patterns are off: the figures show the "
                "harm they prevent)."
            ),
            "",
            "| figure | resilient | baseline |",
            "|---|---|---|",
        ]
        for label, key, unit in COMPARED:
            ours, theirs = s.get(key), baseline.summary.get(key)
            lines.append(f"| {label} | {_value(ours, unit)} | {_value(theirs, unit)} |")
        lines += ["", "![baseline timeline](timeline-baseline.png)"]
    lines += ["", "## How to read this", "", HOW_TO_READ, ""]
    return "\n".join(lines)


def plot(ctx: RunContext, path: Path, *, title: str | None = None) -> None:
    """The PNG timeline: rates by status, p50/p99, breaker state; fault window shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = timeline(ctx)
    ts = [row["t"] for row in data["bins"]]
    fig, (ax_rate, ax_lat, ax_brk) = plt.subplots(
        3, 1, figsize=(11, 8), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1]}
    )
    bottom = [0.0] * len(ts)
    for name, colour in CLASSES:
        values = [row["rps"][name] for row in data["bins"]]
        if any(values):
            ax_rate.bar(
                ts,
                values,
                width=data["bin_s"],
                bottom=bottom,
                color=colour,
                label=name,
                align="edge",
            )
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax_rate.axvspan(0, 0, color="#d62728", alpha=0.12, label="fault window")
    ax_rate.set_ylabel("answers / s")
    ax_rate.legend(loc="upper left", fontsize=8, ncol=4)
    mids = [t + data["bin_s"] / 2 for t in ts]
    for key, style, label in (("p50_s", "-", "p50"), ("p99_s", "--", "p99")):
        values = [row[key] * 1000 if row[key] is not None else float("nan") for row in data["bins"]]
        ax_lat.plot(mids, values, style, label=label)
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_yscale("log")
    ax_lat.legend(loc="upper left", fontsize=8)
    dependency = ctx.scenario.dependency or "payments"
    obs = ctx.observer.observations
    if isinstance(ctx.scenario.fault, LoadSpike):
        # No breaker here: the load shedder's limit (summed over the web processes).
        ax_brk.step(
            [o.t for o in obs],
            [o.concurrency_limit if o.concurrency_limit is not None else float("nan") for o in obs],
            where="post",
            color="#d62728",
        )
        ax_brk.set_ylabel("concurrency\nlimit")
    else:
        ax_brk.step(
            [o.t for o in obs],
            [o.breakers.get(dependency, 0) for o in obs],
            where="post",
            color="#d62728",
        )
        ax_brk.set_yticks(list(BREAKER_STATES), list(BREAKER_STATES.values()))
        ax_brk.set_ylim(-0.3, 2.3)
        ax_brk.set_ylabel(f"breaker\n{dependency}")
    ax_brk.set_xlabel("seconds since traffic started")
    for ax in (ax_rate, ax_lat, ax_brk):
        ax.axvspan(ctx.t_inject, ctx.t_heal, color="#d62728", alpha=0.12)
        ax.grid(alpha=0.3)
    verdict = "PASS" if ctx.passed else "FAIL"
    fig.suptitle(
        title or f"{ctx.scenario.name}: {ctx.scenario.fault.description} ({verdict})", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(
    out: Path, ctx: RunContext, baseline: RunContext | None = None, *, command: str = ""
) -> list[Path]:
    """Write report.md, report.json, timeline.png (and timeline-baseline.png) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.md", out / "report.json"]
    written[0].write_text(markdown(ctx, baseline, command=command))
    written[1].write_text(json.dumps(to_json(ctx, baseline), indent=1, default=str) + "\n")
    if ctx.summary:
        plot(ctx, out / "timeline.png")
        written.append(out / "timeline.png")
    if baseline is not None and baseline.summary:
        plot(
            baseline,
            out / "timeline-baseline.png",
            title=f"BASELINE (RESILIENCE_ENABLED=false) {baseline.scenario.name}: "
            f"{baseline.scenario.fault.description}",
        )
        written.append(out / "timeline-baseline.png")
    with (out / "samples.jsonl").open("w") as fh:
        for sample in ctx.samples:
            fh.write(json.dumps(asdict(sample)) + "\n")
    return written
