"""Token authentication whose tokens expire after ``ACCOUNTS_TOKEN_TTL_S``.

While Postgres is unavailable, a token seen recently is still recognised from a copy in
Redis (``ACCOUNTS_TOKEN_CACHE_S``), so read endpoints that can answer from the cache
(``resilience.stale``) keep working for signed-in clients. Writes still need Postgres
and answer 503.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from accounts.models import User
from resilience import degrade
from resilience.errors import DEGRADE_ON

# Each process refreshes a token's cached copy at most this often: one Redis write per
# token per minute, not one per request.
_REFRESH_EVERY_S = 60
_MAX_TRACKED = 10_000
_last_cached: dict[str, float] = {}
_lock = threading.Lock()


def token_expiry_cutoff():
    """Tokens created before this instant are expired."""
    return timezone.now() - timedelta(seconds=settings.ACCOUNTS_TOKEN_TTL_S)


def _cache_key(key: str) -> str:
    return "auth:token:" + hashlib.sha256(key.encode()).hexdigest()


def remember_token(key: str, user: User, token: Token) -> None:
    """Keep a short-lived copy of a valid token for Postgres outages."""
    cache_key = _cache_key(key)
    now = time.monotonic()
    with _lock:
        if now - _last_cached.get(cache_key, -_REFRESH_EVERY_S) < _REFRESH_EVERY_S:
            return
        if len(_last_cached) >= _MAX_TRACKED:
            _last_cached.clear()
        _last_cached[cache_key] = now
    entry = {"user_id": user.pk, "email": user.email, "created": token.created.isoformat()}
    cache.set(cache_key, entry, timeout=settings.ACCOUNTS_TOKEN_CACHE_S)


def forget_token(key: str) -> None:
    """Drop the cached copy (logout): a revoked token must not live on in Redis."""
    cache_key = _cache_key(key)
    with _lock:
        _last_cached.pop(cache_key, None)
    cache.delete(cache_key)


def remembered_user(key: str) -> User | None:
    """The user a cached, unexpired token belongs to (an unsaved instance), or None."""
    entry = cache.get(_cache_key(key))
    if entry is None or datetime.fromisoformat(entry["created"]) < token_expiry_cutoff():
        return None
    return User(pk=entry["user_id"], email=entry["email"], is_active=True)


class ExpiringTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``; an expired token is refused like an unknown one."""

    def authenticate_credentials(self, key: str):
        try:
            user, token = super().authenticate_credentials(key)
        except DEGRADE_ON as exc:
            degrade.or_raise(exc)
            user = remembered_user(key)
            if user is None:
                raise
            return user, None  # degraded: no token object while Postgres is down
        if token.created < token_expiry_cutoff():
            raise AuthenticationFailed("Invalid token.")  # same answer as an unknown token
        remember_token(key, user, token)
        return user, token

    def authenticate_header(self, request) -> str:
        return 'Token realm="api"'


__all__ = ["ExpiringTokenAuthentication", "Token", "forget_token", "token_expiry_cutoff"]
