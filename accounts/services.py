"""Writes for accounts: signup, login (token issue) and logout (token revocation)."""

from __future__ import annotations

from django.contrib.auth import authenticate
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from rest_framework.authtoken.models import Token

from accounts.authentication import forget_token, token_expiry_cutoff
from accounts.models import User, normalize_email
from common.errors import ErrorCode
from resilience.db_routing import current_alias
from resilience.errors import DependencyUnavailableError
from resilience.problems import ConflictError, ProblemCode, ProblemError


class EmailTakenError(ConflictError):
    code = ErrorCode.EMAIL_TAKEN
    title = "Email already registered"


class InvalidCredentialsError(ProblemError):
    status = 401
    code = ErrorCode.INVALID_CREDENTIALS
    title = "Invalid credentials"


class WeakPasswordError(ProblemError):
    code = ProblemCode.INVALID
    title = "The request has invalid fields."

    def __init__(self, messages: list[str]) -> None:
        super().__init__(extra={"errors": {"password": messages}})


def user_signup(*, email: str, password: str) -> User:
    """Create a user; the unique constraint, not a prior lookup, decides a duplicate."""
    email = normalize_email(email)
    try:
        validate_password(password, user=User(email=email))
    except DjangoValidationError as exc:
        raise WeakPasswordError(list(exc.messages)) from exc
    try:
        with transaction.atomic(using=current_alias()):
            return User.objects.create_user(email=email, password=password)
    except IntegrityError as exc:
        raise EmailTakenError("An account with this email already exists.") from exc


def auth_login(*, email: str, password: str) -> Token:
    """Return a valid token for the credentials, or one uniform 401.

    ``authenticate`` hashes a dummy password when the email is unknown, so the answer
    takes as long for a missing account as for a wrong password: accounts cannot be
    enumerated by content or by timing.
    """
    user = authenticate(username=normalize_email(email), password=password)
    if user is None:
        raise InvalidCredentialsError("Email or password is incorrect.")
    with transaction.atomic(using=current_alias()):
        Token.objects.filter(user=user, created__lt=token_expiry_cutoff()).delete()
        token, _ = Token.objects.get_or_create(user=user)
    return token


def auth_logout(*, token: Token | None) -> None:
    """Revoke the token used for this request (and its outage copy in Redis)."""
    if token is None:  # authenticated from the outage copy: Postgres is down
        raise DependencyUnavailableError("postgres")
    forget_token(token.key)
    Token.objects.filter(pk=token.pk).delete()


def tokens_purge_expired() -> int:
    """Delete expired tokens; return how many were deleted."""
    deleted, _ = Token.objects.filter(created__lt=token_expiry_cutoff()).delete()
    return deleted
