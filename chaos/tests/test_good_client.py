"""The retry-storm scenario's good client (chaos/scenarios/good_client.py), on a real server."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token

from accounts.models import User
from chaos.scenarios.good_client import comparison_lines, good_client_burst, naive_load
from orders.models import Order
from tests.contract.server import api_server

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_good_client_places_each_order_once_and_counts_its_requests(tmp_path):
    tokens = []
    for index in range(2):
        user = User.objects.create_user(email=f"good{index}@example.com", password="good-pass-1")
        tokens.append(Token.objects.create(user=user).key)
    with api_server(tmp_path) as base:
        load = good_client_burst(base, tokens, operations=6, deadline_s=20, seed=3)
    assert (load.operations, load.succeeded) == (6, 6)
    assert load.requests >= 6
    assert load.statuses.get("201") == 6
    assert Order.objects.count() == 6  # one order per logical operation


def test_naive_load_counts_requests_per_key_and_the_table_compares_both():
    naive = naive_load([("k1", 1, 409), ("k1", 1, 201), ("k1", 2, 409), ("k2", 1, 0)])
    assert (naive.operations, naive.requests, naive.succeeded) == (2, 4, 1)
    assert naive.per_operation == 2.0
    assert naive.statuses == {"409": 2, "201": 1, "no answer": 1}
    good = naive_load([("g1", 1, 201)])
    table = comparison_lines(naive, good)
    assert table[0].startswith("| client |")
    assert "| 2 | 4 | 2.00 | 1 |" in table[2]
