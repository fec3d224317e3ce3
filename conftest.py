"""Fixtures shared by every test: API clients, users, and clean database pools."""

from __future__ import annotations

import itertools

import pytest
from django.db import connections
from rest_framework.test import APIClient

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
        for connection in connections.all():
            connection.close()
            if hasattr(connection, "close_pool"):
                connection.close_pool()


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
