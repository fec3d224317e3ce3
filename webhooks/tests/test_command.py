"""``manage.py webhooks``: bad ids are clean command errors, not tracebacks."""

from __future__ import annotations

import uuid

import pytest
from django.core.management import CommandError, call_command


@pytest.mark.parametrize("option", ["--delivery", "--endpoint"])
def test_a_malformed_id_is_a_command_error(option):
    arguments = (
        ["replay", option, "not-a-uuid"]
        if option == "--delivery"
        else ["replay", "--dead", option, "x"]
    )
    with pytest.raises(CommandError, match="invalid UUID value"):
        call_command("webhooks", *arguments)


@pytest.mark.django_db
def test_an_unknown_delivery_is_a_command_error():
    with pytest.raises(CommandError):
        call_command("webhooks", "replay", "--delivery", str(uuid.uuid4()))
