"""Operate webhook delivery: show the backlog, list and replay dead letters.

manage.py webhooks status
manage.py webhooks dead [--limit 50]
manage.py webhooks replay --delivery ID
manage.py webhooks replay --dead [--endpoint ID]
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from resilience.problems import ProblemError
from webhooks import selectors, services
from webhooks.models import Delivery, DeliveryStatus


class Command(BaseCommand):
    help = "Show the webhook backlog; list or replay dead-lettered deliveries."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["status", "dead", "replay"])
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--delivery", type=uuid.UUID, help="replay this one delivery")
        target.add_argument("--dead", action="store_true", help="replay every dead letter")
        parser.add_argument("--endpoint", type=uuid.UUID, help="with --dead: only this endpoint's")
        parser.add_argument("--limit", type=int, default=50, help="rows listed by `dead`")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "status":
            backlog = selectors.delivery_backlog()
            self.stdout.write(
                f"pending={backlog.pending} dead={backlog.dead} lag_s={backlog.lag_s:.1f}"
            )
        elif action == "dead":
            dead = Delivery.objects.filter(status=DeliveryStatus.DEAD).select_related(
                "event", "endpoint"
            )
            for delivery in dead.order_by("-dead_at")[: options["limit"]]:
                self.stdout.write(
                    f"{delivery.id} {delivery.event.type:<24} {delivery.endpoint.url} "
                    f"attempts={delivery.attempts} last={delivery.last_status_code} "
                    f"{delivery.last_error}"
                )
        elif options["delivery"]:
            try:
                services.delivery_replay(delivery_id=options["delivery"])
            except ProblemError as exc:
                raise CommandError(exc.detail) from exc
            self.stdout.write(f"replayed {options['delivery']}")
        elif options["dead"]:
            count = services.deliveries_replay_dead(endpoint_id=options["endpoint"])
            self.stdout.write(f"replayed {count} dead-lettered deliveries")
        else:
            raise CommandError("replay needs --delivery ID or --dead")
