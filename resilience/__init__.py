"""The resilience library: one module per pattern, policies named per dependency.

Call sites name a dependency; they never build their own retry loops, breakers or
timeouts. A feature applies the patterns by declaration (adr/0011):

* settings: ``RESILIENCE["dependencies"][name]`` (timeouts, retry, breaker, bulkhead),
  ``RESILIENCE_RATELIMIT`` policies, ``RESILIENCE_CONCURRENCY``;
* one line per use: ``PAYMENTS = uses_dependency("payments")`` then
  ``http.client(PAYMENTS).request(...)``; ``throttle_classes = [throttle("policy")]``;
  ``@idempotent(...)``; ``@priority("critical")``;
* one type to catch when degrading: :class:`resilience.errors.Refusal`.

The library imports Django, DRF, Celery, Redis and its chosen libraries, never the
project around it (``tests/test_library_boundary.py``). See ``docs/patterns/`` for each
pattern and ``docs/timeouts.md`` for the table.
"""
