"""The "good client" of the retry-storm scenario: resilient_client (client/) under the fault.

Beside the storm's naive clients (several copies of one order, retried at once, no
backoff, ``Retry-After`` ignored), the same number of logical operations is placed with
the project's own client: one ``Idempotency-Key`` per order reused across its retries,
full-jitter backoff honouring ``Retry-After``, a 20% retry budget and a deadline. The
report puts the requests per logical operation that each put on the server during the
fault side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from resilient_client import Attempt, Client, ClientError, RetryBudget, RetryPolicy

ORDER_ITEMS = [{"sku": "chaos-widget", "quantity": 1, "unit_price": 1999}]


@dataclass
class ClientLoad:
    """Requests that logical operations put on the server."""

    name: str
    operations: int = 0
    requests: int = 0
    succeeded: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def per_operation(self) -> float:
        return self.requests / self.operations if self.operations else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "operations": self.operations,
            "requests": self.requests,
            "requests_per_operation": round(self.per_operation, 2),
            "succeeded": self.succeeded,
            "statuses": dict(sorted(self.statuses.items())),
        }


def good_client_burst(
    base_url: str,
    tokens: Sequence[str],
    *,
    operations: int,
    deadline_s: float = 15.0,
    seed: int = 0,
) -> ClientLoad:
    """Place ``operations`` orders at once, each one logical call of resilient_client."""
    load = ClientLoad("good client (resilient_client)", operations=operations)
    lock = threading.Lock()
    budget = RetryBudget(ratio=0.2)  # one budget for the fleet of calls, as one process has

    def count(attempt: Attempt) -> None:
        with lock:
            load.requests += 1
            key = str(attempt.status) if attempt.status is not None else "no answer"
            load.statuses[key] = load.statuses.get(key, 0) + 1

    def place(index: int) -> None:
        api = Client(
            base_url,
            token=tokens[index % len(tokens)],
            retry=RetryPolicy(deadline_s=deadline_s, attempt_timeout_s=5.0),
            budget=budget,
            on_attempt=count,
            seed=seed + index,
        )
        try:
            api.create_order("EUR", ORDER_ITEMS)
        except ClientError:
            return
        with lock:
            load.succeeded += 1

    with ThreadPoolExecutor(
        max_workers=min(32, operations), thread_name_prefix="chaos-good"
    ) as pool:
        list(pool.map(place, range(operations)))
    return load


def naive_load(keys_attempts: Iterable[tuple[str, int, int | None]]) -> ClientLoad:
    """The storm's load from its samples: (idempotency key, attempt, status) per request.

    One logical operation per key (a storm client's order, sent in several copies).
    """
    load = ClientLoad("naive client (storm)")
    keys: set[str] = set()
    succeeded: set[str] = set()
    for key, _attempt, status in keys_attempts:
        keys.add(key)
        load.requests += 1
        name = str(status) if status not in (None, 0) else "no answer"
        load.statuses[name] = load.statuses.get(name, 0) + 1
        if status in (200, 201):
            succeeded.add(key)
    load.operations = len(keys)
    load.succeeded = len(succeeded)
    return load


def comparison_lines(naive: ClientLoad, good: ClientLoad) -> list[str]:
    """A small Markdown table: requests per logical operation, side by side."""
    rows = [
        "| client | logical operations | requests | requests per operation | succeeded |",
        "|---|---|---|---|---|",
    ]
    for load in (naive, good):
        rows.append(
            f"| {load.name} | {load.operations} | {load.requests} | "
            f"{load.per_operation:.2f} | {load.succeeded} |"
        )
    return rows
