"""Login and signup limits: per IP and per submitted username, against the real stack."""

from __future__ import annotations

import pytest

from tests.problems import assert_problem
from tests.ratelimit_support import ratelimit_settings

pytestmark = pytest.mark.django_db

LOGIN = "/api/v1/auth/login"
ADMIN_LOGIN = "/admin/login/"
SIGNUP = "/api/v1/auth/signup"
GOOD_PASSWORD = "a-Long-enough-passphrase-1"


@pytest.fixture
def login_limits(settings, limiter_with_clock):
    """Small buckets and a trusted local proxy, so tests can pose as many clients."""
    ratelimit_settings(
        settings,
        trusted_proxies=["127.0.0.1/32"],
        policies={
            "login_ip": {"capacity": 4, "refill_rate": 1 / 60},
            "login_username": {"capacity": 3, "refill_rate": 1 / 60},
        },
    )


def login(client, email, password=None, ip="198.51.100.1"):
    password = "wrong-password" if password is None else password
    return client.post(
        LOGIN, {"email": email, "password": password}, format="json", HTTP_X_FORWARDED_FOR=ip
    )


def test_after_the_limit_even_the_right_password_waits_for_a_refill(
    api_client, make_user, login_limits, fake_clock
):
    user, password = make_user(email="victim@example.com")
    for _ in range(3):
        assert login(api_client, user.email).status_code == 401
    refused = login(api_client, user.email, password)
    body = assert_problem(refused, 429, "rate_limited")
    assert body["violated-policies"] == ["login_username"]
    assert int(refused["Retry-After"]) == 60

    fake_clock.advance(59.5)
    assert_problem(login(api_client, user.email, password), 429)
    fake_clock.advance(0.5)  # one token is back
    assert login(api_client, user.email, password).status_code == 200


def test_rotating_source_ips_does_not_bypass_the_per_username_limit(
    api_client, make_user, login_limits
):
    user, password = make_user(email="target@example.com")
    for i in range(3):
        assert login(api_client, user.email, ip=f"203.0.113.{i}").status_code == 401
    for i in range(3, 8):
        response = login(api_client, user.email, password, ip=f"203.0.113.{i}")
        body = assert_problem(response, 429, "rate_limited")
        assert body["violated-policies"] == ["login_username"]


def test_rotating_usernames_does_not_bypass_the_per_ip_limit(api_client, make_user, login_limits):
    user, password = make_user(email="real@example.com")
    for i in range(4):
        assert login(api_client, f"guess{i}@example.com").status_code == 401
    response = login(api_client, user.email, password)
    body = assert_problem(response, 429, "rate_limited")
    assert body["violated-policies"] == ["login_ip"]
    # The same account from another client is still served: the per-IP limit is per IP.
    assert login(api_client, user.email, password, ip="198.51.100.200").status_code == 200


def test_the_username_is_normalised_before_bucketing(api_client, make_user, login_limits):
    make_user(email="bob@example.com")
    variants = ["bob@example.com", "BOB@Example.com", "  bob@EXAMPLE.com "]
    for i, email in enumerate(variants):
        assert login(api_client, email, ip=f"192.0.2.{i}").status_code == 401
    assert_problem(login(api_client, "Bob@example.com", ip="192.0.2.9"), 429)


def test_a_spoofed_forwarded_for_from_an_untrusted_client_changes_nothing(
    api_client, settings, make_user, login_limits
):
    ratelimit_settings(settings, trusted_proxies=[])
    for i in range(4):
        assert login(api_client, f"u{i}@example.com", ip=f"203.0.113.{i}").status_code == 401
    body = assert_problem(login(api_client, "u9@example.com", ip="203.0.113.99"), 429)
    assert body["violated-policies"] == ["login_ip"]


def test_signup_is_limited_per_client_ip(api_client, settings, limiter_with_clock):
    ratelimit_settings(
        settings,
        trusted_proxies=["127.0.0.1/32"],
        policies={"signup": {"capacity": 2, "refill_rate": 1 / 3600}},
    )

    def signup(n, ip):
        payload = {"email": f"new{n}@example.com", "password": GOOD_PASSWORD}
        return api_client.post(SIGNUP, payload, format="json", HTTP_X_FORWARDED_FOR=ip)

    assert signup(1, "198.51.100.1").status_code == 201
    assert signup(2, "198.51.100.1").status_code == 201
    response = signup(3, "198.51.100.1")
    body = assert_problem(response, 429, "rate_limited")
    assert body["violated-policies"] == ["signup"]
    assert int(response["Retry-After"]) == 3600  # one token an hour
    assert signup(4, "198.51.100.2").status_code == 201


def admin_login(client, email, password=None, ip="198.51.100.1"):
    form = {"username": email, "password": "wrong-password" if password is None else password}
    return client.post(ADMIN_LOGIN, form, HTTP_X_FORWARDED_FOR=ip)


def test_the_admin_login_spends_from_the_api_logins_buckets(
    client, api_client, make_user, login_limits, fake_clock
):
    """A second login form is not a second set of guesses: one bucket per username."""
    staff, password = make_user(email="admin@example.com")
    staff.is_staff = staff.is_superuser = True
    staff.save()
    assert login(api_client, staff.email).status_code == 401
    for i in range(2):  # wrong passwords: the form comes back with an error
        assert admin_login(client, staff.email, ip=f"203.0.113.{i}").status_code == 200

    refused = admin_login(client, " ADMIN@example.com", password, ip="203.0.113.9")
    body = assert_problem(refused, 429, "rate_limited")
    assert body["violated-policies"] == ["login_username"]
    assert int(refused["Retry-After"]) == 60
    assert "_auth_user_id" not in client.session
    assert_problem(login(api_client, staff.email, password, ip="203.0.113.10"), 429)

    fake_clock.advance(60)  # one token is back
    assert admin_login(client, staff.email, password).status_code == 302  # signed in
    assert client.session["_auth_user_id"] == str(staff.pk)


def test_rotating_usernames_on_the_admin_login_does_not_bypass_the_per_ip_limit(
    client, login_limits
):
    for i in range(4):
        assert admin_login(client, f"guess{i}@example.com").status_code == 200
    body = assert_problem(admin_login(client, "guess9@example.com"), 429, "rate_limited")
    assert body["violated-policies"] == ["login_ip"]
    assert client.get(ADMIN_LOGIN).status_code == 200  # showing the form spends nothing


def test_a_lone_surrogate_in_the_email_is_a_4xx_not_a_500(api_client):
    """JSON may escape a lone surrogate; the per-username bucket key must still hash it."""
    body = '{"email": "\\ud800", "password": "x"}'  # valid JSON text, not valid UTF-8 once decoded
    response = api_client.post(LOGIN, body, content_type="application/json")
    assert 400 <= response.status_code < 500, response.content
    assert response["Content-Type"] == "application/problem+json"
