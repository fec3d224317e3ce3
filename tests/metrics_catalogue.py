"""Read docs/metrics.md and find the metric names a PromQL expression uses."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.processes import ROOT

CATALOGUE = ROOT / "docs" / "metrics.md"
_ROW = re.compile(r"^\|\s*`(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|(?P<rest>.*)\|\s*$")
# PromQL words that look like metric names: functions, operators, aggregation keywords.
PROMQL_WORDS = frozenset(
    (
        *("sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk"),
        *("quantile", "count_values", "group", "rate", "irate", "increase", "delta"),
        *("idelta", "deriv", "predict_linear", "resets", "changes", "histogram_quantile"),
        *("abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max", "sqrt", "exp"),
        *("ln", "log2", "log10", "absent", "absent_over_time", "vector", "scalar", "time"),
        *("timestamp", "label_replace", "label_join", "sort", "sort_desc", "avg_over_time"),
        *("min_over_time", "max_over_time", "sum_over_time", "count_over_time"),
        *("last_over_time", "quantile_over_time", "stddev_over_time", "present_over_time"),
        *("and", "or", "unless", "by", "without", "on", "ignoring", "group_left"),
        *("group_right", "bool", "offset"),
    )
)
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


@dataclass(frozen=True)
class Metric:
    name: str
    type: str
    labels: tuple[str, ...]
    exported_by: tuple[str, ...]
    alerts: tuple[str, ...]


def catalogue() -> dict[str, Metric]:
    """Every metric row of docs/metrics.md, by name."""
    metrics = {}
    for line in CATALOGUE.read_text().splitlines():
        match = _ROW.match(line)
        if not match:
            continue
        cells = [cell.strip() for cell in match["rest"].split("|")]
        kind, labels, exported_by, _meaning, alerts = cells
        metrics[match["name"]] = Metric(
            name=match["name"],
            type=kind.split()[0],
            labels=tuple(x.strip() for x in labels.split(",") if x.strip() not in {"", "-"}),
            exported_by=tuple(x.strip() for x in exported_by.split(",")),
            alerts=tuple(x.strip() for x in alerts.split(",") if x.strip() not in {"", "-"}),
        )
    return metrics


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (label matchers, groupings, strings removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)
    tokens = re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", text)
    return {token for token in tokens if token not in PROMQL_WORDS}


def catalogued_name(name: str, metrics: dict[str, Metric]) -> str | None:
    """The catalogue entry a series name belongs to (histogram suffixes included)."""
    if name in metrics:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and metrics.get(base) and metrics[base].type == "histogram":
            return base
    return None
