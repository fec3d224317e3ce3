"""The resilience library: one module per pattern, policies named per dependency.

Call sites name a dependency; they never build their own retry loops, breakers or
timeouts. See ``docs/patterns/`` for each pattern and ``docs/timeouts.md`` for the table.
"""
