"""Serializers of query strings that mean what the OpenAPI schema says."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class QuerySerializer(serializers.Serializer):
    """Validates ``request.query_params``; a parameter sent empty is invalid, not absent.

    DRF reads an empty form value of an optional field as "not sent" (``?status=`` lists
    every status, ``?days=`` takes the default). The schema promises an enum or an
    integer, so an empty value is a 400 like any other value outside it.
    """

    def to_internal_value(self, data: Any) -> Any:
        if hasattr(data, "getlist"):
            blank = {
                name: ["This field may not be blank."]
                for name in self.fields
                if name in data and any(value == "" for value in data.getlist(name))
            }
            if blank:
                raise serializers.ValidationError(blank)
        return super().to_internal_value(data)


# --- JSON bodies typed as the schema says ----------------------------------------------
# DRF coerces: CharField takes 0 as "0", IntegerField takes "5" and 5.0. The schema says
# string and integer, so a client (or a generated one) sending another JSON type is told
# with a 400 instead of being silently accepted.


class _StrictString:
    default_error_messages = {"not_a_string": "Must be a JSON string."}

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictCharField(_StrictString, serializers.CharField):
    pass


class StrictRegexField(_StrictString, serializers.RegexField):
    pass


class StrictEmailField(_StrictString, serializers.EmailField):
    pass


class StrictChoiceField(_StrictString, serializers.ChoiceField):
    pass


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"not_an_integer": "Must be a JSON integer."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("not_an_integer")
        return super().to_internal_value(data)
