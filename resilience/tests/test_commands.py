"""Operator commands: the breakers switchboard and the policy table."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from resilience.breakers import BreakerOpenError, breaker


def run(*args: str) -> str:
    out = StringIO()
    call_command("breakers", *args, stdout=out)
    return out.getvalue()


def test_list_shows_every_configured_breaker():
    listing = run("list")
    for name in ("payments", "postgres", "redis"):
        assert name in listing
    payments_line = next(line for line in listing.splitlines() if line.startswith("payments"))
    assert "(shared" in payments_line


def test_force_open_then_close_a_shared_breaker():
    assert "payments: open" in run("open", "payments")
    with pytest.raises(BreakerOpenError):
        breaker("payments").call(lambda: None)
    assert "forced open until closed" in run("list")
    assert "payments: closed" in run("close", "payments")
    assert breaker("payments").call(lambda: "ok") == "ok"


def test_unknown_or_missing_dependency_is_a_command_error():
    with pytest.raises(CommandError):
        run("open")
    with pytest.raises(CommandError):
        run("open", "no-such-dependency")
