"""``migrate`` without the request-path statement timeout, with a migration lock timeout.

The aliases carry a short ``statement_timeout`` for every query. A schema change may
legitimately run longer, but it must never wait long for a lock: while it waits, every
query touching the table queues behind it. So migrations run with no statement timeout
and ``DB_MIGRATION_LOCK_TIMEOUT_MS`` as lock timeout; on a lock timeout, run again.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.commands.migrate import Command as DjangoMigrateCommand
from django.db import connections


class Command(DjangoMigrateCommand):
    help = DjangoMigrateCommand.help + " Runs without statement timeout, with a lock timeout."

    def handle(self, *args: Any, **options: Any) -> None:
        connection = connections[options["database"]]
        with connection.cursor() as cursor:
            cursor.execute("SET statement_timeout = 0")
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, false)",
                [str(settings.DB_MIGRATION_LOCK_TIMEOUT_MS)],
            )
        try:
            super().handle(*args, **options)
        finally:
            # The connection goes back to a pool: restore the startup-packet timeouts.
            if connection.connection is not None:
                with connection.cursor() as cursor:
                    cursor.execute("RESET statement_timeout")
                    cursor.execute("RESET lock_timeout")
