"""Create the database named in ``DATABASE_URL`` if it does not exist yet.

``make run`` calls this before ``migrate`` so a fresh machine needs no manual step.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.core.management.base import BaseCommand
from django.db import connections
from psycopg import sql


class Command(BaseCommand):
    help = "Create the configured database if it is missing."

    def handle(self, *args: Any, **options: Any) -> None:
        params = connections["default"].get_connection_params()
        name = params.pop("dbname")
        params.pop("options", None)  # no statement timeout on maintenance work
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params.pop("prepare_threshold", None)
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if exists:
                self.stdout.write(f"database {name} exists")
                return
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.stdout.write(f"database {name} created")
