"""A client generated from the schema (openapi-python-client) compiles and works.

Generated into a temporary directory on each run, never committed: the test is that
whatever a consumer generates from ``/api/schema/`` today parses the real answers,
including the pagination envelope and the problem documents.
"""

from __future__ import annotations

import compileall
import importlib
import json
import subprocess
import sys

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from accounts.models import User
from tests.contract.server import api_server
from tests.processes import VENV_BIN

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PACKAGE = "generated_api_client"


def generate(tmp_path):
    schema = tmp_path / "schema.json"
    call_command("spectacular", "--format", "openapi-json", "--file", str(schema))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"post_hooks": []}))  # no formatter run on the output
    root = tmp_path / "generated"
    command = [
        str(VENV_BIN / "openapi-python-client"), "generate", "--path", str(schema),
        "--meta", "none", "--config", str(config), "--output-path", str(root / PACKAGE),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    return root


def test_generated_client_compiles_and_parses_the_envelope(tmp_path, monkeypatch):
    root = generate(tmp_path)
    assert compileall.compile_dir(str(root), quiet=1)
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m.startswith(PACKAGE)]:
        del sys.modules[name]
    client_module = importlib.import_module(f"{PACKAGE}.client")
    orders_create = importlib.import_module(f"{PACKAGE}.api.v1.orders_create")
    orders_list = importlib.import_module(f"{PACKAGE}.api.v1.orders_list")
    models = importlib.import_module(f"{PACKAGE}.models")

    user = User.objects.create_user(email="gen@example.com", password="generated-pass-1")
    token = Token.objects.create(user=user).key
    with api_server(tmp_path) as base:
        api = client_module.AuthenticatedClient(base_url=base, token=token, prefix="Token")
        body = models.OrderCreateInputRequest.from_dict(
            {"currency": "EUR", "items": [{"sku": "BOOK-1", "quantity": 1, "unit_price": 100}]}
        )
        for _ in range(2):
            created = orders_create.sync_detailed(client=api, body=body)
            assert created.status_code == 201, created.content
            assert isinstance(created.parsed, models.OrderOutput)
        page = orders_list.sync(client=api, page_size=1)
        assert isinstance(page, models.PaginatedOrderOutputList)
        assert page.count == 2
        assert len(page.results) == 1
        assert isinstance(page.results[0], models.OrderOutput)
        assert page.next_ is not None  # `next` is a builtin: the generator appends "_"
        assert page.previous is None
        # An error answer parses as the Problem component, with its code.
        anonymous = client_module.Client(base_url=base)
        refused = orders_list.sync_detailed(client=anonymous)
        assert refused.status_code == 401
        assert isinstance(refused.parsed, models.Problem)
        assert str(refused.parsed.code.value) == "not_authenticated"
