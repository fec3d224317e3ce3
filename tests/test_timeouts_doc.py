"""docs/timeouts.md is exactly what `manage.py resilience` prints."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command

from tests.processes import ROOT


def test_timeouts_doc_matches_the_effective_table():
    out = StringIO()
    call_command("resilience", stdout=out)
    doc = (ROOT / "docs" / "timeouts.md").read_text()
    assert out.getvalue() in doc, "regenerate with: python manage.py resilience"
