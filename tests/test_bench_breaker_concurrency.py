"""`make bench` keeps running on today's library: the breaker benchmark builds a breaker
the way the library does (a policy, not pybreaker's keyword arguments)."""

from __future__ import annotations

from bench import breaker_concurrency, support


def test_the_breaker_benchmark_runs_on_the_library(capsys, monkeypatch):
    # The suite has set Django up already; the bench's own setup makes a database.
    monkeypatch.setattr(support, "setup_django", lambda: None)
    breaker_concurrency.main()
    printed = capsys.readouterr().out
    assert "resilience Breaker:" in printed
    assert "pybreaker" in printed
