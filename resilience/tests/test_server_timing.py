"""Server-Timing: each request's time per dependency, from the breaker-guarded calls.

Against the real Postgres: the API's answer carries the time its queries took, a slow
query shows as at least its own duration, and the switch turns the header off.
"""

from __future__ import annotations

import pytest
from django.db import connection

from conftest import client_for
from resilience import timing


def test_an_api_answer_carries_the_time_its_postgres_queries_took(user):
    answer = client_for(user).get("/api/v1/orders")
    assert answer.status_code == 200
    spent = timing.parse(answer["Server-Timing"])
    assert set(spent) >= {"postgres"}
    assert 0 < spent["postgres"] < 5


@pytest.mark.django_db
def test_a_slow_query_is_counted_at_least_its_duration():
    with timing.tallying() as tally, connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.2)")
        cursor.execute("SELECT 1")
    # Outside a request nothing is tallied (a Celery task has no tally).
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.05)")
    assert 0.2 <= tally["postgres"] < 2
    assert timing.parse(timing.header_value(tally)) == pytest.approx(tally, abs=1e-3)


def test_the_header_is_off_when_the_setting_says_so(user, settings):
    settings.RESILIENCE = {**settings.RESILIENCE, "server_timing": False}
    answer = client_for(user).get("/api/v1/orders")
    assert answer.status_code == 200
    assert "Server-Timing" not in answer


def test_names_become_tokens_and_entries_without_a_duration_count_zero():
    value = timing.header_value({"webhook:example.com": 0.0125, "redis": 0.0008})
    assert value == "webhook-example.com;dur=12.5, redis;dur=0.8"
    assert timing.parse('cache;desc="hit", db;dur=53, db;dur=1') == {"cache": 0.0, "db": 0.054}
    assert timing.parse(None) == {}
    assert timing.parse(" , ;dur=3") == {}
