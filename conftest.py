"""Fixtures shared by every test: API clients, users, and clean database pools."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from django.db import connections
from rest_framework.test import APIClient

# Rate-limit fixtures: unique bucket keys per test (autouse), fake clock, own Redis.
pytest_plugins = ["tests.ratelimit_support"]

_emails = itertools.count()
TEST_PASSWORD = "a-Long-enough-passphrase-1"  # noqa: S105 - a test fixture's password


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Close every pool before pytest-django drops the test database.

    A pooled alias keeps idle connections open, and Postgres refuses to drop a database
    that is "being accessed by other users".
    """
    yield
    with django_db_blocker.unblock():
        # Sessions of processes a test started and that are still closing would make
        # DROP DATABASE wait past its statement timeout: end them first (our own test
        # database only).
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        for connection in connections.all():
            connection.close()
            if hasattr(connection, "close_pool"):
                connection.close_pool()


@pytest.fixture(autouse=True)
def fresh_resilience():
    """Every test starts with new breakers, budgets, bulkheads and clients.

    Shared breaker state and fleet bulkhead leases live in the suite's own Redis
    database; they are wiped too, so one test's open breaker or held slot never leaks
    into the next.
    """
    from resilience import probes
    from resilience.breaker_state import _shared_state_redis
    from resilience.registry import reset_all

    def wipe() -> None:
        probes.stop_runner()  # a runner of the last test must not probe this one's breakers
        reset_all()
        client = _shared_state_redis()
        keys = [
            *client.scan_iter("resilience:breaker:*", count=1000),
            *client.scan_iter("resilience:bulkhead:*", count=1000),
        ]
        if keys:
            client.delete(*keys)

    wipe()
    yield
    wipe()


@pytest.fixture
def wide_request_pool() -> Iterator[None]:
    """Let 50 threads share the request pool: they queue for a connection, none fail.

    The production pool (one connection per web thread, 16 waiters, 1 s wait) would
    answer some of the 50 with 503 (a correct answer, but not the one under test).
    """
    pool_options = connections["default"].settings_dict["OPTIONS"]["pool"]
    saved = dict(pool_options)
    connections["default"].close()
    connections["default"].close_pool()
    pool_options.update(max_size=20, max_waiting=0, timeout=30)
    try:
        yield
    finally:
        connections["default"].close()
        connections["default"].close_pool()
        pool_options.clear()
        pool_options.update(saved)


@pytest.fixture
def no_rate_limits(settings):
    """For tests about other patterns that send more requests than a client may."""
    settings.RESILIENCE_RATELIMIT = {**settings.RESILIENCE_RATELIMIT, "enabled": False}


@pytest.fixture
def no_load_shedding(settings):
    """For tests about other patterns that send more concurrent requests into this one
    process than a web process has threads (where shedding is right, but not under test)."""
    settings.RESILIENCE_CONCURRENCY = {**settings.RESILIENCE_CONCURRENCY, "enabled": False}


@pytest.fixture
def payments(settings):
    """A real payments service on free ports, with the app's payments policy aimed at it."""
    from chaos.payments import PaymentsService

    service = PaymentsService()
    service.start()
    dependencies = {**settings.RESILIENCE["dependencies"]}
    dependencies["payments"] = {**dependencies["payments"], "base_url": service.api_url}
    settings.RESILIENCE = {**settings.RESILIENCE, "dependencies": dependencies}
    try:
        yield service
    finally:
        service.stop()


def override_policy(settings, dependency: str, **parts) -> None:
    """Replace parts of one dependency's policy for a test (e.g. ``retry={...}``)."""
    dependencies = {**settings.RESILIENCE["dependencies"]}
    merged = {**dependencies[dependency]}
    for part, values in parts.items():
        merged[part] = {**merged.get(part, {}), **values} if isinstance(values, dict) else values
    dependencies[dependency] = merged
    settings.RESILIENCE = {**settings.RESILIENCE, "dependencies": dependencies}


@pytest.fixture
def toxiproxy():
    """Our Toxiproxy-compatible fault proxy in a thread, and a client for its API."""
    from chaos.proxy import ProxyServer
    from chaos.toxiproxy_client import ToxiproxyClient

    server = ProxyServer(port=0)
    port = server.start_in_thread()
    try:
        yield ToxiproxyClient(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def make_user(db):
    """Create a user with a unique email; returns (user, password)."""
    from accounts.models import User

    def make(email: str | None = None, password: str = TEST_PASSWORD):
        email = email or f"user{next(_emails)}@example.com"
        return User.objects.create_user(email=email, password=password), password

    return make


@pytest.fixture
def user(make_user):
    return make_user()[0]


def client_for(user) -> APIClient:
    """An API client authenticated with a fresh token for ``user``."""
    from rest_framework.authtoken.models import Token

    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def auth_client(user) -> APIClient:
    return client_for(user)
