"""The OpenAPI schema validates and documents every endpoint; docs are served."""

from __future__ import annotations

import pytest
from django.core.management import call_command


def test_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = out.read_text()
    for route in (
        "/api/v1/auth/signup",
        "/api/v1/auth/login",
        "/api/v1/orders",
        "/api/v1/orders/report",
        "/api/v1/orders/{order_id}",
    ):
        assert f"{route}:" in schema


@pytest.mark.django_db
def test_docs_page_is_served(client):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


# --- The schema tells the truth (issue 15) -------------------------------------------------
def schema() -> dict:
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def operation(doc: dict, path: str, method: str) -> dict:
    return doc["paths"][path][method]


def test_lists_document_the_pagination_envelope_and_bounds():
    doc = schema()
    for path in ("/api/v1/orders", "/api/v1/webhooks/endpoints", "/api/v1/webhooks/deliveries"):
        get = operation(doc, path, "get")
        ref = get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        envelope = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert set(envelope["required"]) == {"count", "next", "previous", "results"}
        assert envelope["properties"]["results"]["type"] == "array"
        params = {p["name"]: p["schema"] for p in get["parameters"]}
        assert params["page_size"] == {"type": "integer", "minimum": 1, "maximum": 100}
        assert params["page"]["minimum"] == 1


def test_every_error_answer_is_the_problem_component():
    doc = schema()
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "code", "request_id"} <= set(problem["required"])
    assert "errors" in problem["properties"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            errors = {s: r for s, r in op["responses"].items() if int(s) >= 400}
            assert {"429", "503"} <= set(errors), (method, path)
            for status, response in errors.items():
                content = response["content"]
                assert list(content) == ["application/problem+json"], (method, path, status)
                assert content["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"
                }
            assert "Retry-After" in errors["429"]["headers"]
            assert "Retry-After" in errors["503"]["headers"]
            success = next(r for s, r in op["responses"].items() if int(s) < 400)
            assert {"RateLimit", "RateLimit-Policy"} <= set(success.get("headers", {}))


def test_operation_specific_answers_headers_and_constraints():
    doc = schema()
    signup = operation(doc, "/api/v1/auth/signup", "post")
    assert "401" not in signup["responses"]  # no credentials needed
    assert "email_taken" in signup["responses"]["409"]["description"]
    create = operation(doc, "/api/v1/orders", "post")
    assert {"400", "401", "409", "415", "422"} <= set(create["responses"])
    assert {"Location", "Idempotent-Replayed"} <= set(create["responses"]["201"]["headers"])
    key = next(p for p in create["parameters"] if p["name"] == "Idempotency-Key")
    assert key["in"] == "header"
    assert "pattern" in key["schema"]
    detail = operation(doc, "/api/v1/orders/{order_id}", "get")
    assert "404" in detail["responses"]
    report = operation(doc, "/api/v1/orders/report", "get")
    assert "rate_limiter_unavailable" in report["responses"]["503"]["description"]
    components = doc["components"]["schemas"]
    items = components["OrderCreateInputRequest"]["properties"]["items"]
    assert (items["minItems"], items["maxItems"]) == (1, 100)
    events = components["EndpointCreateInputRequest"]["properties"]["event_types"]
    assert events["minItems"] == 1
    password = components["CredentialsInputRequest"]["properties"]["password"]
    assert (password["minLength"], password["maxLength"]) == (8, 128)
    assert password["pattern"] == r"\D"


def test_links_of_the_first_session():
    doc = schema()
    signup = operation(doc, "/api/v1/auth/signup", "post")["responses"]["201"]["links"]
    assert signup["Login"]["operationId"] == "auth_login_create"
    login = operation(doc, "/api/v1/auth/login", "post")["responses"]["200"]["links"]
    assert login["CreateOrder"]["operationId"] == "orders_create"
    order = operation(doc, "/api/v1/orders", "post")["responses"]["201"]["links"]
    assert order["GetOrder"]["parameters"] == {"path.order_id": "$response.body#/id"}
    operation_ids = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    for links in (signup, login, order):
        assert {link["operationId"] for link in links.values()} <= operation_ids
