"""Token authentication whose tokens expire after ``ACCOUNTS_TOKEN_TTL_S``."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed


def token_expiry_cutoff():
    """Tokens created before this instant are expired."""
    return timezone.now() - timedelta(seconds=settings.ACCOUNTS_TOKEN_TTL_S)


class ExpiringTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``; an expired token is refused like an unknown one."""

    def authenticate_credentials(self, key: str):
        user, token = super().authenticate_credentials(key)
        if token.created < token_expiry_cutoff():
            raise AuthenticationFailed("Invalid token.")  # same answer as an unknown token
        return user, token

    def authenticate_header(self, request) -> str:
        return 'Token realm="api"'


__all__ = ["ExpiringTokenAuthentication", "Token", "token_expiry_cutoff"]
