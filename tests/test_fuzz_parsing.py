"""Fuzz the request-parsing layer: malformed input gets a 4xx problem+json, never a 500.

Hypothesis builds raw requests for every operation of the OpenAPI schema (bodies of
arbitrary bytes, broken or odd JSON, wrong content types, odd headers, raw query
strings, bad Content-Length) and sends them through the whole stack in process
(middleware, DRF parsing, authentication, throttles, views) against the real Postgres
and Redis. Exceptions are re-raised by the test client, so any unhandled error fails.
Deterministic (derandomised, no example database) and bounded.
"""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import Client
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token

from accounts.models import User
from common.errors import ERROR_CODES
from resilience.problems import PROBLEM_CONTENT_TYPE

pytestmark = pytest.mark.django_db

CODES = set(ERROR_CODES)


def operations() -> list[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    found = []
    for path, item in schema["paths"].items():
        for method in item:
            found.append((method.upper(), path))
    return sorted(found)


OPERATIONS = operations()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "email": st.one_of(st.text(max_size=30), json_values),
        "password": st.one_of(st.text(max_size=30), json_values),
        "currency": st.one_of(st.sampled_from(["EUR", "usd", ""]), json_values),
        "items": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "sku": json_values,
                        "quantity": st.one_of(st.integers(), json_values),
                        "unit_price": st.one_of(st.integers(), json_values),
                    },
                ),
                max_size=3,
            ),
            json_values,
        ),
        "url": st.one_of(st.text(max_size=40), json_values),
        "event_types": st.one_of(st.lists(st.text(max_size=15), max_size=3), json_values),
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
    json_values.map(lambda value: json.dumps(value).encode()),
    near_valid.map(lambda value: json.dumps(value).encode()),
    near_valid.map(lambda value: json.dumps(value).encode()[:-3]),  # truncated
    st.just(b""),
    st.just(b'{"a": 1e999999}'),
    st.just(b"\xef\xbb\xbf{}"),  # BOM
    st.just(b'{"email": "\\ud800"}'),  # lone surrogate escape
    st.just(b"[" * 5000),  # deep nesting
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "application/json; charset=nonsense",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "multipart/form-data",
        "application/problem+json",
        "",
        ";;;",
    ]
)


def as_wsgi(text: str) -> str:
    """What a WSGI server hands over for these bytes on the wire (PEP 3333: latin-1)."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF), max_size=300
).map(as_wsgi)
headers = st.fixed_dictionaries(
    {},
    optional={
        "HTTP_IDEMPOTENCY_KEY": header_text,
        "HTTP_X_REQUEST_ID": header_text,
        "HTTP_ACCEPT": st.one_of(
            header_text, st.sampled_from(["text/html", "*/*", "application/json;q=0"])
        ),
        "HTTP_X_FORWARDED_FOR": header_text,
        "HTTP_CONTENT_ENCODING": st.sampled_from(["gzip", "br", "identity", "x"]),
        "CONTENT_LENGTH": st.one_of(
            st.sampled_from(["-1", "abc", "", "99999999999", "1e3", " 5"]),
            st.integers(0, 400).map(str),
        ),
    },
)
query_strings = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.tuples(
            st.sampled_from(["page", "page_size", "days", "status", "endpoint", "x", ""]),
            st.one_of(
                st.text(max_size=12),
                st.integers(-5, 10**12).map(str),
                st.sampled_from(
                    [
                        "",
                        "last",
                        "\u00b2",
                        "\u0661",  # superscript two, Arabic-Indic one: isdigit()
                        "0x10",
                        "1.0",
                        "%00",
                        "%ff",
                    ]
                ),
            ),
        ),
        max_size=4,
    ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)),
).map(as_wsgi)
path_ids = st.one_of(st.uuids().map(str), st.sampled_from(["x", "0", "%00", "..", "a" * 300]))
authorization = st.sampled_from(["valid", "none", "Token nope", "Token ", "Bearer x", "Token \x7f"])


@pytest.fixture
def token() -> str:
    user = User.objects.create_user(email="fuzz@example.com", password="fuzz-pass-1")
    return Token.objects.create(user=user).key


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    operation=st.sampled_from(OPERATIONS),
    body=bodies,
    content_type=content_types,
    extra=headers,
    query=query_strings,
    path_id=path_ids,
    auth=authorization,
)
def test_malformed_requests_get_a_problem_never_a_500(  # noqa: PLR0917 - one per strategy
    token, operation, body, content_type, extra, query, path_id, auth
):
    method, template = operation
    path = template.replace("{order_id}", path_id).replace("{endpoint_id}", path_id)
    meta = dict(extra)
    if auth == "valid":
        meta["HTTP_AUTHORIZATION"] = f"Token {token}"
    elif auth != "none":
        meta["HTTP_AUTHORIZATION"] = auth
    meta["QUERY_STRING"] = query
    client = Client(raise_request_exception=True)
    response = client.generic(method, path, data=body, content_type=content_type, **meta)
    assert response.status_code < 500, (response.status_code, response.content[:500])
    if response.status_code >= 400 and response.status_code != 405:
        assert response["Content-Type"] == PROBLEM_CONTENT_TYPE, response.content[:300]
        problem = json.loads(response.content)
        assert problem["status"] == response.status_code
        assert problem["code"] in CODES, problem


def test_every_operation_is_fuzzed():
    assert len(OPERATIONS) == 16
    assert ("POST", "/api/v1/orders") in OPERATIONS
    assert ("POST", "/api/v1/orders/{order_id}/refunds") in OPERATIONS
    uuid.UUID(str(uuid.uuid4()))
