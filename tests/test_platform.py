"""The platform settings are real: pools, server-side timeouts, Celery safety, checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from config.celery import app as celery_app
from config.env import env
from tests.processes import ROOT


@pytest.mark.django_db(databases=["default", "background"])
@pytest.mark.parametrize(
    ("alias", "statement_timeout", "application_name"),
    [("default", "2s", "resilient-web"), ("background", "15s", "resilient-background")],
)
def test_each_alias_has_its_own_timeouts_on_the_server(alias, statement_timeout, application_name):
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),"
            " current_setting('idle_in_transaction_session_timeout'),"
            " current_setting('application_name')"
        )
        row = cursor.fetchone()
    assert row == (statement_timeout, "1s", "5s", application_name)


@pytest.mark.django_db(databases=["default", "background"])
@pytest.mark.parametrize("alias", ["default", "background"])
def test_every_postgres_socket_has_keepalives_and_a_tcp_user_timeout(alias):
    """Read off the live socket: the kernel finds a vanished peer in seconds, not hours."""
    with connections[alias].cursor():
        fd = connections[alias].connection.pgconn.socket
        # A duplicate: closing the probe must not close the driver's socket.
        probe = socket.socket(fileno=os.dup(fd))
        try:
            options = (
                probe.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            )
        finally:
            probe.close()
    assert options == (
        1,
        settings.DB_KEEPALIVES_IDLE_S,
        settings.DB_KEEPALIVES_INTERVAL_S,
        settings.DB_KEEPALIVES_COUNT,
        settings.DB_TCP_USER_TIMEOUT_MS,
    )


@pytest.mark.django_db
def test_the_statement_timeout_cancels_a_slow_query():
    from django.db import OperationalError

    with (
        pytest.raises(OperationalError, match="statement timeout"),
        connections["default"].cursor() as cursor,
    ):
        cursor.execute("SELECT pg_sleep(3)")


def test_pools_are_bounded_and_fail_fast():
    for alias in ("default", "background"):
        config = settings.DATABASES[alias]
        pool = config["OPTIONS"]["pool"]
        assert config["CONN_MAX_AGE"] == 0
        assert config["CONN_HEALTH_CHECKS"] is True
        assert config["OPTIONS"]["connect_timeout"] >= 2
        assert pool["timeout"] <= 5
        assert pool["max_waiting"] > 0
    assert settings.DATABASES["default"]["OPTIONS"]["pool"]["timeout"] <= 1


def test_the_cache_client_is_bounded_in_tens_of_milliseconds():
    options = settings.CACHES["default"]["OPTIONS"]
    assert options["socket_timeout"] <= 0.1
    assert options["socket_connect_timeout"] <= 0.1
    assert options["retry"].get_retries() == 0


def test_celery_is_configured_for_safety():
    conf = celery_app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert 0 < conf.task_soft_time_limit < conf.task_time_limit
    transport = conf.broker_transport_options
    assert 1 < transport["socket_timeout"] <= 5  # above the 1 s BRPOP poll, but bounded
    assert transport["socket_connect_timeout"] <= 5
    assert transport["visibility_timeout"] > conf.task_time_limit
    assert {q.name for q in conf.task_queues} == {"default", "webhooks"}
    assert celery_app.amqp.router.route({}, "webhooks.tasks.deliver")["queue"].name == "webhooks"
    assert (
        celery_app.amqp.router.route({}, "accounts.tasks.purge_expired_tokens")["queue"].name
        == "default"
    )
    assert conf.task_publish_retry_policy["max_retries"] <= 3


def test_a_misspelt_celery_setting_is_an_error(settings):
    assert not [e for e in run_checks() if e.id == "common.E001"]
    settings.CELERY_TASK_TIME_LIMT = 5
    errors = [e for e in run_checks() if e.id == "common.E001"]
    assert [e.msg for e in errors] == ["Unknown Celery setting CELERY_TASK_TIME_LIMT."]


def test_env_fails_loudly(monkeypatch):
    monkeypatch.delenv("SOME_REQUIRED_VALUE", raising=False)
    with pytest.raises(ImproperlyConfigured, match="Set the SOME_REQUIRED_VALUE"):
        env("SOME_REQUIRED_VALUE")
    monkeypatch.setenv("SOME_NUMBER", "ten")
    with pytest.raises(ImproperlyConfigured, match="not a valid int"):
        env("SOME_NUMBER", default=1, cast=int)
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured):
        env("SOME_FLAG", default=False, cast=bool)
    monkeypatch.setenv("SOME_LIST", "a, b,,c")
    assert env("SOME_LIST", cast=list) == ["a", "b", "c"]


def _manage(*args: str, **environ: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_production_settings_pass_the_deploy_check():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SETTINGS_MODULE="config.settings.production",
        DJANGO_SECRET_KEY="k" * 64 + "-Production-Secret-9f8e7d6c5b4a",
        DJANGO_ALLOWED_HOSTS="api.example.com",
        DATABASE_URL="postgres://app@db.internal:5432/resilient",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_refuse_to_start_without_a_secret():
    result = _manage(
        "check",
        DJANGO_SETTINGS_MODULE="config.settings.production",
        DJANGO_ALLOWED_HOSTS="api.example.com",
        DATABASE_URL="postgres://app@db.internal:5432/resilient",
    )
    assert result.returncode != 0
    assert "Set the DJANGO_SECRET_KEY environment variable" in result.stderr


def test_debug_is_off_unless_asked_for():
    result = _manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.DEBUG)",
        DJANGO_SETTINGS_MODULE="config.settings.local",
    )
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_a_broker_socket_timeout_at_or_below_the_brpop_wait_is_an_error(settings):
    assert not [e for e in run_checks() if e.id == "common.E002"]
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        "socket_timeout": 1,
    }
    assert [e.id for e in run_checks() if e.id == "common.E002"] == ["common.E002"]
