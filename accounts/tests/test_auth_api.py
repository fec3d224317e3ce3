"""The auth endpoints against the real database: success paths and every bad input."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token

from accounts.models import User
from conftest import client_for
from tests.problems import assert_problem

pytestmark = pytest.mark.django_db

SIGNUP = "/api/v1/auth/signup"
LOGIN = "/api/v1/auth/login"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"
GOOD_PASSWORD = "a-Long-enough-passphrase-1"


def test_signup_creates_a_user_and_never_echoes_the_password(api_client):
    response = api_client.post(
        SIGNUP, {"email": "New@Example.com", "password": GOOD_PASSWORD}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["email"] == "new@example.com"
    assert "password" not in body
    assert User.objects.get(email="new@example.com").check_password(GOOD_PASSWORD)


def test_signup_with_a_taken_email_in_any_case_is_a_conflict(api_client, make_user):
    make_user(email="taken@example.com")
    response = api_client.post(
        SIGNUP, {"email": "TAKEN@example.com", "password": GOOD_PASSWORD}, format="json"
    )
    assert_problem(response, 409, "email_taken")
    assert User.objects.filter(email="taken@example.com").count() == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"password": GOOD_PASSWORD}, "email"),
        ({"email": "x@example.com"}, "password"),
        ({"email": "not-an-email", "password": GOOD_PASSWORD}, "email"),
        ({"email": 12, "password": GOOD_PASSWORD}, "email"),
        ({"email": "x@example.com", "password": ["a", "b"]}, "password"),
        ({"email": "x@example.com", "password": "short"}, "password"),
        ({"email": "x@example.com", "password": "password123"}, "password"),
        ({"email": "x@example.com", "password": "12345678901"}, "password"),
    ],
)
def test_signup_rejects_invalid_fields_with_per_field_detail(api_client, payload, field):
    body = assert_problem(api_client.post(SIGNUP, payload, format="json"), 400, "invalid")
    assert field in body["errors"]
    assert not User.objects.exists()


def test_login_returns_a_token_that_authenticates(api_client, make_user):
    user, password = make_user(email="me@example.com")
    response = api_client.post(
        LOGIN, {"email": "ME@example.com", "password": password}, format="json"
    )
    assert response.status_code == 200
    token = response.json()["token"]
    api_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    me = api_client.get(ME)
    assert me.status_code == 200
    assert me.json()["email"] == user.email


def test_login_failures_are_indistinguishable(api_client, make_user):
    """Wrong password, unknown email and inactive account give the same answer."""
    make_user(email="known@example.com")
    inactive, password = make_user(email="inactive@example.com")
    inactive.is_active = False
    inactive.save()
    attempts = [
        {"email": "known@example.com", "password": "wrong-password-1"},
        {"email": "unknown@example.com", "password": "wrong-password-1"},
        {"email": "inactive@example.com", "password": password},
        {"email": "not even an email", "password": "x"},
    ]
    bodies = []
    for attempt in attempts:
        body = assert_problem(
            api_client.post(LOGIN, attempt, format="json"), 401, "invalid_credentials"
        )
        bodies.append({k: v for k, v in body.items() if k != "request_id"})
    assert all(body == bodies[0] for body in bodies)


def test_login_reuses_a_live_token_and_replaces_an_expired_one(api_client, make_user):
    user, password = make_user()
    first = api_client.post(
        LOGIN, {"email": user.email, "password": password}, format="json"
    ).json()
    again = api_client.post(
        LOGIN, {"email": user.email, "password": password}, format="json"
    ).json()
    assert again["token"] == first["token"]
    Token.objects.filter(user=user).update(created=timezone.now() - timedelta(days=30))
    renewed = api_client.post(
        LOGIN, {"email": user.email, "password": password}, format="json"
    ).json()
    assert renewed["token"] != first["token"]


def test_logout_revokes_the_token(user):
    client = client_for(user)
    assert client.post(LOGOUT).status_code == 204
    assert_problem(client.get(ME), 401, "authentication_failed")
    assert not Token.objects.filter(user=user).exists()


def test_me_without_token_is_401_with_a_challenge(api_client):
    response = api_client.get(ME)
    assert_problem(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Token")


def test_an_expired_or_unknown_token_is_refused(api_client, user):
    client = client_for(user)
    Token.objects.filter(user=user).update(created=timezone.now() - timedelta(days=30))
    assert_problem(client.get(ME), 401, "authentication_failed")
    api_client.credentials(HTTP_AUTHORIZATION="Token 0000000000000000000000000000000000000000")
    assert_problem(api_client.get(ME), 401, "authentication_failed")


def test_malformed_json_is_400(api_client):
    response = api_client.post(SIGNUP, data='{"email": ', content_type="application/json")
    assert_problem(response, 400, "parse_error")


def test_wrong_content_type_is_415(api_client):
    response = api_client.post(
        SIGNUP, data="email=a@b.c", content_type="application/x-www-form-urlencoded"
    )
    assert_problem(response, 415, "unsupported_media_type")


def test_oversized_body_is_413_before_parsing(api_client, settings):
    settings.API_MAX_BODY_BYTES = 1024
    payload = '{"email": "a@example.com", "password": "' + "x" * 2000 + '"}'
    body = assert_problem(
        api_client.post(SIGNUP, data=payload, content_type="application/json"),
        413,
        "body_too_large",
    )
    assert body["max_bytes"] == 1024
    assert not User.objects.exists()


def test_wrong_method_is_405(api_client):
    assert_problem(api_client.get(SIGNUP), 405, "method_not_allowed")


def test_purge_removes_only_expired_tokens(make_user):
    from accounts.services import tokens_purge_expired

    fresh, _ = make_user()
    stale, _ = make_user()
    Token.objects.create(user=fresh)
    Token.objects.create(user=stale)
    Token.objects.filter(user=stale).update(created=timezone.now() - timedelta(days=30))
    assert tokens_purge_expired() == 1
    assert list(Token.objects.values_list("user", flat=True)) == [fresh.pk]
