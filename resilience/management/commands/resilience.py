"""Print the effective resilience table (timeouts, retries, budgets, breakers, bulkheads)."""

from typing import Any

from django.core.management.base import BaseCommand

from resilience.table import render


class Command(BaseCommand):
    help = "Print the effective per-dependency resilience table (docs/timeouts.md)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(render(), ending="")
