"""A Postgres whose network swallows the answer: the client-side read deadline.

The real Postgres behind our fault proxy: a ``timeout`` toxic with no timeout drops
every byte and never closes the stream, as a partition does. Without the deadline a
query blocks for good (shown below); with it the query fails at its deadline with the
driver's own "connection lost" error, which the breaker counts, and a query that is
merely slow is never cut.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import OperationalError, connections
from prometheus_client import REGISTRY

from resilience.db import is_connection_failure
from resilience.db_backend.base import DatabaseWrapper

pytestmark = pytest.mark.django_db
READ_DEADLINE_S = 0.6


def through_the_proxy(toxiproxy, pool: dict[str, Any] | None) -> Iterator[DatabaseWrapper]:
    """A wrapper of our backend on the test database through the fault proxy."""
    db = connections["default"].settings_dict
    proxy = toxiproxy.create_proxy("pg-deadline", "127.0.0.1:0", f"{db['HOST']}:{db['PORT']}")
    settings_dict = copy.deepcopy(db)
    settings_dict["HOST"], settings_dict["PORT"] = proxy["listen"].rsplit(":", 1)
    settings_dict["OPTIONS"].pop("pool", None)
    if pool is not None:
        settings_dict["OPTIONS"]["pool"] = pool
    settings_dict["CLIENT_READ_TIMEOUT_S"] = READ_DEADLINE_S
    alias = f"deadline-{'pooled' if pool else 'plain'}"
    wrapper = DatabaseWrapper(settings_dict, alias=alias)
    wrapper.inc_thread_sharing()  # its queries run in threads the test can abandon
    try:
        yield wrapper
    finally:
        toxiproxy.reset()  # removing the toxic closes its streams: nothing stays blocked
        wrapper.close()
        if pool is not None:
            wrapper.close_pool()


@pytest.fixture
def proxied(toxiproxy) -> Iterator[tuple[Any, DatabaseWrapper]]:
    """One plain connection through the fault proxy."""
    for wrapper in through_the_proxy(toxiproxy, None):
        yield toxiproxy, wrapper


@pytest.fixture
def pooled(toxiproxy) -> Iterator[tuple[Any, DatabaseWrapper]]:
    """A pool of one connection (checked at every checkout) through the fault proxy."""
    for wrapper in through_the_proxy(toxiproxy, {"min_size": 1, "max_size": 1, "timeout": 0.5}):
        yield toxiproxy, wrapper


def run_query(wrapper: DatabaseWrapper, sql: str, wait_s: float) -> dict[str, Any]:
    """Run ``sql`` in a thread; what happened within ``wait_s`` (never blocks the test)."""
    outcome: dict[str, Any] = {}

    def query() -> None:
        started = time.monotonic()
        try:
            with wrapper.cursor() as cursor:
                cursor.execute(sql)
                outcome["rows"] = cursor.fetchall()
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test inspects
            outcome["error"] = exc
        outcome["took_s"] = time.monotonic() - started

    thread = threading.Thread(target=query, daemon=True)
    thread.start()
    thread.join(wait_s)
    outcome["finished"] = not thread.is_alive()
    return outcome


def shutdowns() -> float:
    name = "resilience_socket_deadline_exceeded_total"
    return REGISTRY.get_sample_value(name, {"dependency": "postgres"}) or 0.0


def test_a_swallowed_answer_fails_at_the_read_deadline(proxied):
    toxiproxy, wrapper = proxied
    assert run_query(wrapper, "SELECT 1", 5)["rows"] == [(1,)]
    before = shutdowns()
    toxiproxy.add_toxic("pg-deadline", "timeout", {"timeout": 0}, name="swallow")
    outcome = run_query(wrapper, "SELECT 1", 10)
    assert outcome["finished"], "the query stayed blocked past its read deadline"
    assert isinstance(outcome["error"], OperationalError), outcome
    assert is_connection_failure(outcome["error"])  # the breaker counts it
    assert READ_DEADLINE_S <= outcome["took_s"] < READ_DEADLINE_S + 2
    assert shutdowns() == before + 1


def test_a_slow_answer_within_the_deadline_is_not_cut(proxied):
    _, wrapper = proxied
    before = shutdowns()
    outcome = run_query(wrapper, f"SELECT pg_sleep({READ_DEADLINE_S / 2})", 10)
    assert outcome["finished"], outcome
    assert "error" not in outcome, outcome
    assert run_query(wrapper, "SELECT 2", 5)["rows"] == [(2,)]  # the connection lives on
    assert shutdowns() == before


def test_without_the_deadline_the_query_blocks(proxied, settings):
    toxiproxy, wrapper = proxied
    settings.RESILIENCE_ENABLED = False  # the chaos baseline: Django and psycopg alone
    assert run_query(wrapper, "SELECT 1", 5)["rows"] == [(1,)]
    toxiproxy.add_toxic("pg-deadline", "timeout", {"timeout": 0}, name="swallow")
    outcome = run_query(wrapper, "SELECT 1", 3 * READ_DEADLINE_S)
    assert not outcome["finished"]  # the fixture's reset closes the stream afterwards


def test_the_pools_checkout_check_has_a_deadline_too(pooled):
    """psycopg_pool checks a pooled connection (an empty query) before handing it out,
    on the caller's thread: a swallowed answer there must not hold the request."""
    toxiproxy, wrapper = pooled
    assert run_query(wrapper, "SELECT 1", 5)["rows"] == [(1,)]
    wrapper.close()  # back to the pool, idle
    before = shutdowns()
    toxiproxy.add_toxic("pg-deadline", "timeout", {"timeout": 0}, name="swallow")
    outcome = run_query(wrapper, "SELECT 1", 10)
    assert outcome["finished"], "the checkout stayed blocked in the pool's check"
    assert isinstance(outcome["error"], OperationalError), outcome
    assert is_connection_failure(outcome["error"])
    assert shutdowns() >= before + 1
