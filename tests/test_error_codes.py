"""One list of error codes (common.errors.ERROR_CODES), used by the code and the schema."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ERROR_CODES
from common.schema import problem_schema
from resilience.idempotency import KEY_PATTERN, IdempotencyKeyInvalidError, parse_key
from resilience.problems import ProblemError

# Every module that declares error classes (imported so their subclasses exist).
MODULES = [
    "accounts.services",
    "orders.services",
    "orders.payments",
    "orders.refunds",
    "webhooks.services",
    "resilience.idempotency",
    "resilience.ratelimit.errors",
    "resilience.errors",
    "resilience.ssrf",
]


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


def test_every_error_class_code_is_an_error_code():
    for module in MODULES:
        importlib.import_module(module)
    codes = {cls.code for cls in all_subclasses(ProblemError) if "tests" not in cls.__module__}
    assert codes  # the walk found the classes
    unknown = codes - set(ERROR_CODES)
    assert not unknown, f"add these to common.errors.ErrorCode: {sorted(unknown)}"


def test_no_code_is_spelt_outside_the_enumeration():
    """Problem answers built by hand (middleware, handlers) take enumerated codes too."""
    root = Path(__file__).resolve().parent.parent
    literal = re.compile(r"\bcode=\"(\w+)\"")
    found = {}
    for folder in ("common", "resilience", "accounts", "orders", "webhooks", "config"):
        for path in (root / folder).rglob("*.py"):
            if "tests" in path.parts:
                continue
            for code in literal.findall(path.read_text()):
                found.setdefault(code, path.relative_to(root))
    unknown = {c: str(p) for c, p in found.items() if c not in ERROR_CODES}
    assert not unknown, unknown


def test_the_schema_lists_exactly_the_error_codes():
    assert problem_schema()["properties"]["code"]["enum"] == list(ERROR_CODES)
    assert len(set(ERROR_CODES)) == len(ERROR_CODES)  # no code in both lists


@settings(max_examples=300, derandomize=True, database=None)
@given(
    st.one_of(
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7F), max_size=260),
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=3).map(
            lambda inner: f'"{inner}"'
        ),
        st.sampled_from(['"', '""', '"a"', '"a"b"', '"a\\b"', 'a"', '"a', "x" * 255, "x" * 256]),
        st.sampled_from([f'"{"x" * 255}"', f'"{"x" * 256}"', f'"{"x" * 253}a', f'"{"x" * 254}a']),
    )
)
def test_the_documented_key_pattern_is_what_the_server_accepts(raw):
    try:
        parse_key(raw)
        accepted = True
    except IdempotencyKeyInvalidError:
        accepted = False
    assert bool(re.fullmatch(KEY_PATTERN, raw)) == accepted, raw
