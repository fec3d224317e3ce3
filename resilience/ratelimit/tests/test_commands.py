"""The operator's ``ratelimit`` command: list policies, show and reset a bucket."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command

from tests.problems import assert_problem
from tests.ratelimit_support import ratelimit_settings

pytestmark = pytest.mark.django_db

LOGIN = "/api/v1/auth/login"


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("ratelimit", *args, stdout=out)
    return out.getvalue()


def test_an_operator_can_see_and_reset_a_locked_out_username(api_client, settings, make_user):
    ratelimit_settings(settings, policies={"login_username": {"capacity": 2}})
    user, password = make_user(email="locked@example.com")
    for _ in range(2):
        api_client.post(LOGIN, {"email": user.email, "password": "wrong"}, format="json")
    payload = {"email": user.email, "password": password}
    assert_problem(api_client.post(LOGIN, payload, format="json"), 429)

    shown = run("show", "--policy", "login_username", "--identity", "LOCKED@example.com")
    tokens = float(re.search(r"([0-9.]+) of 2 tokens", shown).group(1))
    assert tokens < 0.5, shown  # empty, refilling at 5 per 15 minutes
    assert "reset (had history)" in run(
        "reset", "--policy", "login_username", "--identity", user.email
    )
    assert api_client.post(LOGIN, payload, format="json").status_code == 200


def test_policies_are_listed_and_bad_arguments_refused():
    listing = run("policies")
    assert "login_username: capacity 5" in listing
    assert "orders_report" in listing
    assert "fail closed" in listing
    with pytest.raises(CommandError):
        run("show", "--policy", "login_ip")
