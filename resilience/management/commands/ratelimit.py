"""Inspect or reset one client's token bucket (runbooks/RateLimitTriggeredLegitimately.md).

    python manage.py ratelimit policies
    python manage.py ratelimit show  --policy login_username --identity bob@example.com
    python manage.py ratelimit reset --policy login_ip --identity 203.0.113.7

``identity`` is what the policy's scope keys on: an IP (``203.0.113.7``, or the /64 of an
IPv6 client), ``user:<id>``, a username (normalised as at login) or ``global``. A reset
empties the Redis bucket's history, so the client has its full capacity again; the
per-process fallback buckets are not touched (they exist only while Redis is down).
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from resilience.ratelimit.config import get_config
from resilience.ratelimit.limiter import Limiter, get_limiter
from resilience.ratelimit.storage import StoreUnavailableError


class Command(BaseCommand):
    help = "List rate-limit policies, or show or reset one identity's bucket."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["policies", "show", "reset"])
        parser.add_argument("--policy")
        parser.add_argument("--identity")

    def handle(self, *args, **options) -> None:
        config = get_config()
        if options["action"] == "policies":
            for policy in [*config.policies.values(), *config.candidates.values()]:
                self.stdout.write(
                    f"{policy.name}: capacity {policy.capacity}, {policy.refill_rate:g}/s, "
                    f"scope {policy.scope}, fail {policy.fail}"
                    + (", DRY RUN" if policy.dry_run else "")
                )
            return
        if not options["policy"] or options["identity"] is None:
            raise CommandError("show and reset need --policy and --identity")
        policy = config.policy(options["policy"])
        identity = options["identity"]
        if policy.scope == "username":
            identity = identity.strip().lower()
        key = Limiter.key(config, policy, identity)
        store = get_limiter().redis_store(config)
        try:
            if options["action"] == "reset":
                existed = store.delete([key])
                self.stdout.write(f"{key}: reset ({'had history' if existed else 'was full'})")
                return
            tat = store.peek(key)
            now = store.execute(store.client.time)
        except StoreUnavailableError as exc:
            raise CommandError(f"Redis is unavailable ({exc})") from exc
        if tat is None:
            self.stdout.write(f"{key}: full ({policy.capacity} of {policy.capacity} tokens)")
            return
        now_s = now[0] + now[1] / 1_000_000
        tokens = max(0.0, policy.capacity - max(0.0, tat - now_s) / policy.interval_s)
        self.stdout.write(
            f"{key}: {tokens:.2f} of {policy.capacity} tokens; "
            f"full again in {max(0.0, tat - now_s):.1f} s"
        )
