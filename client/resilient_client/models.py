"""Typed results of the API's operations (field names as in the OpenAPI schema)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class User:
    id: int
    email: str
    date_joined: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> User:
        return cls(id=data["id"], email=data["email"], date_joined=data["date_joined"])


@dataclass(frozen=True)
class Token:
    token: str
    created: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Token:
        return cls(token=data["token"], created=data["created"])


@dataclass(frozen=True)
class OrderItem:
    sku: str
    quantity: int
    unit_price: int
    line_total: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"sku": self.sku, "quantity": self.quantity, "unit_price": self.unit_price}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrderItem:
        return cls(
            sku=data["sku"],
            quantity=data["quantity"],
            unit_price=data["unit_price"],
            line_total=data.get("line_total"),
        )


@dataclass(frozen=True)
class Order:
    id: str
    status: str
    currency: str
    total_amount: int
    items: list[OrderItem]
    created_at: str
    updated_at: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Order:
        return cls(
            id=data["id"],
            status=data["status"],
            currency=data["currency"],
            total_amount=data["total_amount"],
            items=[OrderItem.from_json(item) for item in data["items"]],
            created_at=data["created_at"],
            updated_at=data["updated_at"],
        )


@dataclass(frozen=True)
class WebhookEndpoint:
    id: str
    url: str
    event_types: list[str]
    is_active: bool
    created_at: str
    disabled_reason: str | None = None
    secret: str | None = None  # only in the answer that created it

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WebhookEndpoint:
        return cls(
            id=data["id"],
            url=data["url"],
            event_types=list(data["event_types"]),
            is_active=data["is_active"],
            created_at=data["created_at"],
            disabled_reason=data.get("disabled_reason"),
            secret=data.get("secret"),
        )


@dataclass(frozen=True)
class Delivery:
    id: str
    event_type: str
    endpoint_id: str
    status: str
    attempts: int
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Delivery:
        return cls(
            id=data["id"],
            event_type=data["event_type"],
            endpoint_id=data["endpoint_id"],
            status=data["status"],
            attempts=data["attempts"],
            raw=data,
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: ``count`` in all, ``next``/``previous`` page URLs or None."""

    count: int
    next: str | None
    previous: str | None
    results: list[T]

    @classmethod
    def from_json(cls, data: dict[str, Any], item: Callable[[dict[str, Any]], T]) -> Page[T]:
        return cls(
            count=data["count"],
            next=data["next"],
            previous=data["previous"],
            results=[item(entry) for entry in data["results"]],
        )
