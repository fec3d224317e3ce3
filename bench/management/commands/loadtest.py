"""Fire concurrent requests at a loopback endpoint; compare admitted with the bucket.

    python manage.py loadtest --url http://127.0.0.1:8000/api/v1/auth/me \\
        --concurrency 16 --duration 10 --policy flood

prints the answers by status, throughput, latency, and the admitted count against what
the policy's token bucket allows in that time: ``capacity + refill_rate x seconds``
(per client identity; all requests of this command share one IP). Start from a full
bucket (a fresh ``RATELIMIT_KEY_PREFIX`` or a wait of one window) for an exact match.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from bench.loadgen import run_load
from resilience.ratelimit.config import get_config


class Command(BaseCommand):
    help = "Load a loopback endpoint and compare admitted requests with the token bucket."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/path")
        parser.add_argument("--concurrency", type=int, default=8)
        parser.add_argument("--duration", type=float, default=5.0, help="seconds")
        parser.add_argument("--method", default="GET")
        parser.add_argument("--header", action="append", default=[], help="'Name: value'")
        parser.add_argument("--json", dest="json_body", help="a JSON request body")
        parser.add_argument("--policy", help="policy name in RESILIENCE_RATELIMIT")
        parser.add_argument("--capacity", type=float, help="bucket capacity (without --policy)")
        parser.add_argument("--rate", type=float, help="refill per second (without --policy)")

    def handle(self, *args, **options) -> None:
        capacity, rate = options["capacity"], options["rate"]
        if options["policy"]:
            policy = get_config().policy(options["policy"])
            capacity, rate = policy.capacity, policy.refill_rate
        headers = {}
        for raw in options["header"]:
            name, sep, value = raw.partition(":")
            if not sep:
                raise CommandError(f"--header {raw!r} is not 'Name: value'")
            headers[name.strip()] = value.strip()
        body = None
        if options["json_body"] is not None:
            body = json.dumps(json.loads(options["json_body"])).encode()
            headers.setdefault("Content-Type", "application/json")
        try:
            result = run_load(
                options["url"],
                concurrency=options["concurrency"],
                duration_s=options["duration"],
                method=options["method"].upper(),
                headers=headers,
                body=body,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        out = self.stdout
        out.write(f"requests: {result.total} in {result.wall_s:.2f} s ({result.rps:.0f}/s)")
        out.write(f"by status: {dict(sorted(result.statuses.items()))}; errors: {result.errors}")
        out.write(
            f"latency: p50 {result.percentile_ms(0.5):.1f} ms, "
            f"p99 {result.percentile_ms(0.99):.1f} ms"
        )
        out.write(f"allowed: {result.allowed}  limited: {result.limited}")
        if capacity is not None and rate is not None:
            expected = capacity + rate * result.elapsed_s
            deviation = (result.allowed - expected) / expected * 100 if expected else 0.0
            out.write(
                f"expected: {expected:.1f} = capacity {capacity:g} + {rate:g}/s x "
                f"{result.elapsed_s:.2f} s  (deviation {deviation:+.1f}%)"
            )
