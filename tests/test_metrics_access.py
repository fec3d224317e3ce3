"""/metrics: easy to reach in development, only for configured networks in production."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.core.checks import run_checks

from tests.processes import ROOT
from tests.ratelimit_support import ratelimit_settings

pytestmark = pytest.mark.django_db

PUBLIC, SCRAPER, GATEWAY = "203.0.113.9", "10.1.2.3", "10.9.9.9"


def scrape(client, remote_addr: str, **headers):
    return client.get("/metrics", REMOTE_ADDR=remote_addr, **headers)


def test_development_serves_everyone(client, settings):
    settings.METRICS_ALLOWED_NETWORKS = None
    response = scrape(client, PUBLIC)
    assert response.status_code == 200
    assert b"django_http_requests" in response.content


def test_restricted_to_configured_networks(client, settings):
    settings.METRICS_ALLOWED_NETWORKS = ["10.1.0.0/16", "::1/128"]
    assert scrape(client, SCRAPER).status_code == 200
    assert scrape(client, "::1").status_code == 200
    refused = scrape(client, PUBLIC)
    assert refused.status_code == 404  # not advertised: the answer of an unknown path
    assert refused["Content-Type"] == "application/problem+json"
    assert b"django_http" not in refused.content


def test_a_public_client_relayed_by_our_gateway_is_refused(client, settings):
    """Behind a trusted proxy the peer is always private; the origin decides."""
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    ratelimit_settings(settings, trusted_proxies=["10.9.0.0/16"])
    assert scrape(client, GATEWAY, HTTP_X_FORWARDED_FOR=PUBLIC).status_code == 404
    assert scrape(client, GATEWAY, HTTP_X_FORWARDED_FOR=SCRAPER).status_code == 200
    # An untrusted peer cannot claim a private origin with the header.
    assert scrape(client, PUBLIC, HTTP_X_FORWARDED_FOR=SCRAPER).status_code == 404


def test_a_malformed_network_fails_the_system_check(settings):
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "ten-dot-zero"]
    errors = [e for e in run_checks() if e.id == "common.E003"]
    assert len(errors) == 1
    assert "ten-dot-zero" in errors[0].msg


def production_setting(**env: str):
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": "x" * 60,
        "DJANGO_ALLOWED_HOSTS": "api.example.com",
        # Required in production; never connected to here (settings only).
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/unused",
        **env,
    }
    environment.pop("METRICS_ALLOWED_NETWORKS", None)
    environment.update(env)
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        "print(json.dumps(settings.METRICS_ALLOWED_NETWORKS))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_production_defaults_to_loopback_and_takes_the_scrapers_networks():
    assert production_setting() == ["127.0.0.0/8", "::1/128"]
    assert production_setting(METRICS_ALLOWED_NETWORKS="10.0.0.0/8,fd00::/8") == [
        "10.0.0.0/8",
        "fd00::/8",
    ]
