"""Inspect and force circuit breakers.

Shared breakers (``shared: True``: payments, postgres, webhook hosts) keep their state
in Redis, so forcing one here acts fleet-wide; the process-local ``redis`` breaker only
exists inside each process and can only be listed with this process's view. The window
rates are this process's (a management command has made no calls: 0).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from resilience.breakers import breaker, known_breakers


class Command(BaseCommand):
    help = "List circuit breakers, or force one open/closed, or reset it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "action", choices=["list", "open", "close", "reset"], nargs="?", default="list"
        )
        parser.add_argument(
            "dependency", nargs="?", help="e.g. payments or webhook:hooks.example.com"
        )

    def handle(self, *args: Any, action: str, dependency: str | None, **options: Any) -> None:
        if action == "list":
            for name, cb in sorted(known_breakers().items()):
                scope = "shared" if cb.shared else "local"
                if cb.forced:
                    extra = ", forced open until closed"
                else:
                    remaining = cb.open_remaining_s()
                    extra = f", open period ends in {remaining:.1f} s" if remaining else ""
                calls, failure_rate, slow_rate = cb.window_rates()
                self.stdout.write(
                    f"{name:<28} {cb.current_state:<10} window={cb.policy.window}"
                    f" calls={calls} failed={failure_rate:.0%} slow={slow_rate:.0%}"
                    f" ({scope}{extra})"
                )
            return
        if not dependency:
            raise CommandError(f"{action} needs a dependency name")
        try:
            cb = breaker(dependency)
        except KeyError as exc:
            raise CommandError(str(exc)) from exc
        if action == "open":
            cb.force_open()
        else:  # close and reset both return to closed with a zero failure count
            cb.close()
        self.stdout.write(f"{dependency}: {cb.current_state}")
