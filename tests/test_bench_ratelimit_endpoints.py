"""The rate-limit benchmark's endpoints answer as the benchmark assumes (it is not run in CI).

`make bench` takes minutes, so CI only checks that every compared endpoint exists, answers
200, and that the limited ones really go through the token bucket (RateLimit fields).
"""

from __future__ import annotations

import pytest

from bench import ratelimit_settings
from bench.ratelimit import GROUPS
from conftest import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def bench_urls(settings):
    settings.ROOT_URLCONF = "bench.ratelimit_urls"
    policies = ratelimit_settings.RESILIENCE_RATELIMIT["policies"]
    settings.RESILIENCE_RATELIMIT = {
        **settings.RESILIENCE_RATELIMIT,
        "policies": {**settings.RESILIENCE_RATELIMIT["policies"], **policies},
    }


@pytest.mark.parametrize("group", GROUPS, ids=lambda group: group.about.split(":")[0])
def test_every_compared_endpoint_answers_and_only_the_baseline_is_unlimited(
    bench_urls, user, group
):
    client = client_for(user)
    baseline, *limited = group.paths.items()
    for name, path in [baseline, *limited]:
        response = client.get(path)
        assert response.status_code == 200, (name, response.content[:200])
        if name == baseline[0]:
            assert "RateLimit-Policy" not in response, name
        elif "token bucket" in name:
            assert 'bench_overhead";q=' in response["RateLimit-Policy"], name
