"""Settings of the web processes the rate-limit benchmark starts (bench/ratelimit.py).

The test settings plus a URL map of benchmark endpoints and three benchmark policies.
The global flood policy is switched off so the "unlimited" endpoint really is.
"""

from config.settings.test import *  # noqa: F403 - a settings layer extends the test one
from config.settings.test import RESILIENCE_RATELIMIT

ROOT_URLCONF = "bench.ratelimit_urls"
RESILIENCE_RATELIMIT = {
    **RESILIENCE_RATELIMIT,
    "middleware": {"policy": None, "path_prefixes": []},
    "policies": {
        **RESILIENCE_RATELIMIT["policies"],
        # Checked on every request and never refusing: measures the limiter's cost only.
        "bench_overhead": {"capacity": 10**9, "refill_rate": 10**6, "scope": "ip"},
        # The same shape as nginx's zone in deploy/nginx/ratelimit.conf (burst 100, 100/s).
        "bench_accuracy": {"capacity": 100, "refill_rate": 100.0, "scope": "ip"},
    },
}
