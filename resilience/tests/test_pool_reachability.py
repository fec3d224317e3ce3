"""A checkout fails at once while Postgres is unreachable (resilience.db_backend).

Without this, every request in the first second of an outage waits the pool timeout for
a connection that cannot come, breaker or not (docs/chaos/postgres-down/). The real
Postgres behind our fault proxy; the window's arithmetic on a clock the test moves.
"""

from __future__ import annotations

import pytest
from django.db import OperationalError

from resilience.db import is_connection_failure
from resilience.db_backend.reachability import PostgresUnreachable, Reachability
from resilience.tests.clock import Clock
from resilience.tests.test_socket_deadline import run_query, through_the_proxy
from tests.processes import wait_for

POOL_TIMEOUT_S = 2.0


class FakeConnection:
    """What Reachability reads of a connection: whether it is closed or broken."""

    def __init__(self) -> None:
        self.closed = False


def test_only_no_live_connection_and_a_fresh_failure_refuse_a_checkout():
    clock = Clock(50.0)
    reach = Reachability(window_s=1.0, clock=clock)
    reach.refuse_if_unreachable()  # nothing known yet: wait as the pool would
    connection = FakeConnection()
    reach.opened(connection)
    reach.failed(OSError("connection refused"))
    reach.refuse_if_unreachable()  # a live connection may come back to the pool
    connection.closed = True  # broken by the server: the pool drops it without close()
    assert reach.alive == 0
    with pytest.raises(PostgresUnreachable, match="connection refused"):
        reach.refuse_if_unreachable()
    clock.now += 1.0  # past the window: let a checkout wait, so the pool tries again
    reach.refuse_if_unreachable()
    reach.failed(OSError("refused again"))
    reach.opened(FakeConnection())  # a success since the failure
    reach.refuse_if_unreachable()


@pytest.mark.django_db
def test_a_checkout_fails_at_once_while_postgres_refuses_connections(toxiproxy):
    pool = {"min_size": 1, "max_size": 2, "timeout": POOL_TIMEOUT_S}
    for wrapper in through_the_proxy(toxiproxy, pool):
        assert run_query(wrapper, "SELECT 1", 10)["rows"] == [(1,)]
        wrapper.close()  # the connection goes back to the pool, idle
        reach = wrapper.pool.reachability
        assert reach.alive >= 1
        toxiproxy.set_enabled("pg-deadline", False)  # closes its streams, refuses new ones
        # The first checkout finds the pooled connections dead and waits while the
        # pool's attempts to open new ones are refused: one slice of the wait, not the
        # pool timeout, once the first attempt has failed.
        first = run_query(wrapper, "SELECT 1", 10)
        assert isinstance(first["error"], OperationalError), first
        assert "postgres unreachable" in str(first["error"])
        assert first["took_s"] < POOL_TIMEOUT_S / 2
        assert reach.alive == 0
        assert reach.failed_at is not None
        second = run_query(wrapper, "SELECT 1", 10)
        assert isinstance(second["error"], OperationalError), second
        assert "postgres unreachable" in str(second["error"])
        assert is_connection_failure(second["error"])  # the breaker counts it
        assert second["took_s"] < POOL_TIMEOUT_S / 2  # it did not wait for the pool
        toxiproxy.set_enabled("pg-deadline", True)
        # Past the window a checkout waits again, and the pool finds Postgres back.
        wait_for(
            lambda w=wrapper: "rows" in run_query(w, "SELECT 1", 10),
            timeout=30,
            what="a query once Postgres is back",
        )


@pytest.mark.django_db
def test_without_resilience_a_checkout_waits_the_pool_timeout(toxiproxy, settings):
    settings.RESILIENCE_ENABLED = False  # the chaos baseline: Django's pool alone
    pool = {"min_size": 1, "max_size": 1, "timeout": POOL_TIMEOUT_S}
    for wrapper in through_the_proxy(toxiproxy, pool):
        assert run_query(wrapper, "SELECT 1", 10)["rows"] == [(1,)]
        wrapper.close()
        toxiproxy.set_enabled("pg-deadline", False)
        run_query(wrapper, "SELECT 1", 10)  # the dead pooled connection
        outcome = run_query(wrapper, "SELECT 1", 10)
        assert isinstance(outcome["error"], OperationalError), outcome
        assert outcome["took_s"] >= POOL_TIMEOUT_S * 0.9
