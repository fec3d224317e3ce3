"""`make bench` keeps running on today's library: the breaker benchmark builds a breaker
the way the library does (a policy, not pybreaker's keyword arguments)."""

from __future__ import annotations

from bench import breaker_concurrency


def test_the_breaker_benchmark_runs_on_the_library(capsys):
    breaker_concurrency.main()
    printed = capsys.readouterr().out
    assert "resilience Breaker:" in printed
    assert "pybreaker" in printed
