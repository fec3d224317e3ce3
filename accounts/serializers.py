from django.conf import settings
from rest_framework import serializers

from common.serializers import StrictCharField, StrictEmailField, StrictRegexField


def password_min_length() -> int:
    """The ``min_length`` of Django's MinimumLengthValidator as configured (default 8)."""
    for validator in settings.AUTH_PASSWORD_VALIDATORS:
        if validator["NAME"].endswith(".MinimumLengthValidator"):
            return validator.get("OPTIONS", {}).get("min_length", 8)
    return 1


class PasswordField(StrictRegexField):
    """A new password: the rules a schema can state are checked here, the rest by Django.

    Length and "not entirely numeric" are in the OpenAPI schema (``minLength``,
    ``maxLength``, ``pattern``), so a client can check them before sending. The
    validators that need data (too similar to the email, a common password) run in
    ``accounts.services.user_signup`` and answer the same 400 ``invalid``.
    """

    def __init__(self, **kwargs):
        super().__init__(
            r"\D",  # at least one non-digit: NumericPasswordValidator, stated in the schema
            min_length=password_min_length(),
            max_length=128,
            trim_whitespace=False,
            error_messages={"invalid": "This password is entirely numeric."},
            help_text=(
                f"At least {password_min_length()} characters, not entirely numeric, not a "
                "common password and not too similar to the email."
            ),
            **kwargs,
        )


class CredentialsInputSerializer(serializers.Serializer):
    email = StrictEmailField(max_length=254)
    password = PasswordField()


class LoginInputSerializer(serializers.Serializer):
    # No email-format validation on login: a malformed email gets the same 401 as a
    # wrong one, so the answer never says which part was wrong.
    email = StrictCharField(max_length=254)
    password = StrictCharField(max_length=128, trim_whitespace=False)


class UserOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()
    date_joined = serializers.DateTimeField()


class TokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField(source="key")
    created = serializers.DateTimeField()
