"""Helpers for tests that send many requests at once on real database connections."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connections
from rest_framework.test import APIClient

JOIN_TIMEOUT_S = 60


def client_with_token(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    client.raise_request_exception = False
    return client


def run_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads; return the results, failing on errors."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = target(index)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
        finally:
            connections.close_all()  # give the thread's connection back to the pool

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=JOIN_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "threads did not finish"
    assert not errors, errors
    return results
