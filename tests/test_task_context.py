"""Request ids into task headers and back out in the worker; the worker metrics switches."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from django.core.exceptions import ImproperlyConfigured

from common import task_context, worker_metrics
from resilience.request_id import bind_request_id, current_request_id, reset_request_id


def test_publish_copies_the_bound_request_id_into_the_headers():
    _, token = bind_request_id("req-123")
    try:
        headers: dict = {}
        task_context.add_request_id_header(headers=headers)
    finally:
        reset_request_id(token)
    assert headers == {"request_id": "req-123"}


def test_publish_without_a_request_adds_nothing_and_keeps_an_explicit_id():
    headers: dict = {}
    task_context.add_request_id_header(headers=headers)
    assert headers == {}
    _, token = bind_request_id("req-outer")
    try:
        headers = {"request_id": "req-explicit"}
        task_context.add_request_id_header(headers=headers)
    finally:
        reset_request_id(token)
    assert headers == {"request_id": "req-explicit"}


def test_a_task_run_binds_the_publishers_id_then_restores_the_previous_one():
    task = SimpleNamespace(request=SimpleNamespace(request_id="req-from-web"))
    assert current_request_id() is None
    task_context.bind_task_request_id(task_id="t1", task=task)
    assert current_request_id() == "req-from-web"
    task_context.unbind_task_request_id(task_id="t1")
    assert current_request_id() is None


def test_a_task_without_an_id_gets_a_fresh_one_per_run():
    task = SimpleNamespace(request=SimpleNamespace())
    task_context.bind_task_request_id(task_id="t2", task=task)
    first = current_request_id()
    task_context.unbind_task_request_id(task_id="t2")
    task_context.bind_task_request_id(task_id="t3", task=task)
    second = current_request_id()
    task_context.unbind_task_request_id(task_id="t3")
    assert first
    assert second
    assert first != second


@pytest.mark.parametrize(("raw", "port"), [(None, 9101), ("9102", 9102), ("0", 0)])
def test_worker_metrics_port_comes_from_the_environment(monkeypatch, raw, port):
    if raw is None:
        monkeypatch.delenv("WORKER_METRICS_PORT", raising=False)
    else:
        monkeypatch.setenv("WORKER_METRICS_PORT", raw)
    assert worker_metrics.metrics_port() == port


@pytest.mark.parametrize("raw", ["nine", "-1", "70000"])
def test_a_malformed_worker_metrics_port_fails_loudly(monkeypatch, raw):
    monkeypatch.setenv("WORKER_METRICS_PORT", raw)
    with pytest.raises(ImproperlyConfigured):
        worker_metrics.metrics_port()


def test_worker_start_wipes_files_of_other_pids_only(monkeypatch, tmp_path):
    directory = tmp_path / "prom"
    directory.mkdir()
    stale = directory / "counter_1.db"
    own = directory / f"counter_{os.getpid()}.db"
    stale.write_bytes(b"x")
    own.write_bytes(b"x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    worker_metrics.wipe_multiproc_dir()
    assert not stale.exists()
    assert own.exists()


def test_task_runs_are_counted_by_outcome_with_their_duration():
    task = SimpleNamespace(name="tests.example")
    counter = worker_metrics.TASKS.labels("tests.example", "success")
    before = counter._value.get()
    worker_metrics.task_started(task_id="t4")
    worker_metrics.task_finished(task_id="t4", task=task, state="SUCCESS")
    assert counter._value.get() == before + 1
    assert worker_metrics.TASK_SECONDS.labels("tests.example")._sum.get() > 0
