"""A well-behaved Python client for the resilient backend API.

from resilient_client import Client

api = Client("http://127.0.0.1:8000")
api.signup("ada@example.com", "correct horse battery")
api.login("ada@example.com", "correct horse battery")
order = api.create_order("EUR", [{"sku": "BOOK-1", "quantity": 2, "unit_price": 1250}])
"""

from resilient_client.client import Attempt, Client, Trace
from resilient_client.errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    DeadlineExceededError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    UnprocessableError,
)
from resilient_client.models import Delivery, Order, OrderItem, Page, Token, User, WebhookEndpoint
from resilient_client.retry import RetryBudget, RetryPolicy

__all__ = [
    "ApiError",
    "Attempt",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ClientError",
    "ConflictError",
    "DeadlineExceededError",
    "Delivery",
    "NotFoundError",
    "Order",
    "OrderItem",
    "Page",
    "PermissionDeniedError",
    "RateLimitedError",
    "RetryBudget",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "Token",
    "Trace",
    "TransportError",
    "UnprocessableError",
    "User",
    "WebhookEndpoint",
]
