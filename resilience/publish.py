"""Publishing a Celery task from inside a request deadline.

Celery's publish retry policy (``CELERY_TASK_PUBLISH_RETRY_POLICY``) and the broker's
socket timeouts (``CELERY_BROKER_SOCKET_TIMEOUT_S``) are fixed numbers: a request with
1 s of budget left could wait 2 s per try on a broker that accepts connections and
never answers, and retries on top. :func:`publish` bounds a publish by what is left of
the request's deadline (``resilience.deadline``):

* outside a deadline (workers, beat, the outbox sweep): the settings' policy, unchanged;
* budget spent: :class:`~resilience.deadline.DeadlineExceededError` without a try;
* inside a deadline: one try, no retry (the caller's fallback, such as the outbox
  sweep, is the retry), through the pooled connection when a whole
  ``CELERY_BROKER_SOCKET_TIMEOUT_S`` fits in what is left, otherwise on a connection of
  its own whose connect and socket timeouts are what is left.

So a publish never outlives the request's budget (docs/timeouts.md, "broker").
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from resilience import deadline

DEPENDENCY = "broker"


def publish(task: Any, args: Any = (), kwargs: Any = None, **options: Any) -> Any:
    """``task.apply_async(args, kwargs, **options)`` bounded by the request's deadline."""
    if kwargs is not None:
        options["kwargs"] = kwargs
    left = deadline.remaining()
    if left is None:
        return task.apply_async(args=args, **options)
    deadline.ensure_time_left(DEPENDENCY)
    per_try = settings.CELERY_BROKER_SOCKET_TIMEOUT_S
    one_try = {**options, "retry": True, "retry_policy": {"max_retries": 0}}
    if left >= per_try:
        return task.apply_async(args=args, **one_try)
    timeout = max(deadline.MIN_USEFUL_S, left)
    with task.app.connection_for_write(
        connect_timeout=timeout,
        transport_options={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    ) as connection:
        return task.apply_async(args=args, connection=connection, **one_try)
