"""Benchmarks run by ``make bench``: each prints figures measured side by side in one run.

Speed and memory targets are checked here, never by timed assertions in tests: these
machines are noisy, so we report ratios of measurements taken in the same run.
"""
