from django.conf import settings
from rest_framework import serializers

from common.serializers import QuerySerializer, StrictChoiceField, StrictRegexField
from webhooks.models import Delivery, DeliveryStatus, Endpoint

# The URLs the API accepts, stated in the OpenAPI schema as this same pattern: a scheme,
# a host (a name or IPv4 address of letters, digits, dots and hyphens, or a bracketed
# IPv6 address; no userinfo, so no "@" parser confusion), an optional port, then visible
# ASCII. Whether the scheme and host may be called is the SSRF guard's verdict (422
# `webhook_target_forbidden` with a `reason`), not a matter of syntax.
WEBHOOK_URL_PATTERN = (
    r"^[A-Za-z][A-Za-z0-9+.-]*://"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::[0-9]{1,5})?(?:[/?#][\x21-\x7E]*)?$"
)


class EndpointCreateInputSerializer(serializers.Serializer):
    # Scheme and address are checked by the service (422 with a reason): SSRF guard.
    url = StrictRegexField(
        WEBHOOK_URL_PATTERN,
        max_length=2048,
        error_messages={"invalid": "Enter a URL with a host name or IP address."},
    )
    event_types = serializers.ListField(
        child=StrictChoiceField(choices=settings.WEBHOOKS_EVENT_TYPES),
        allow_empty=False,
        max_length=len(settings.WEBHOOKS_EVENT_TYPES),
    )


class EndpointOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Endpoint
        fields = ["id", "url", "event_types", "is_active", "disabled_reason", "created_at"]


class EndpointCreatedOutputSerializer(EndpointOutputSerializer):
    """The only answer that carries the signing secret."""

    class Meta(EndpointOutputSerializer.Meta):
        fields = [*EndpointOutputSerializer.Meta.fields, "secret"]


class DeliveryListInputSerializer(QuerySerializer):
    status = serializers.ChoiceField(choices=DeliveryStatus.choices, required=False)
    endpoint = serializers.UUIDField(required=False)


class DeliveryOutputSerializer(serializers.ModelSerializer):
    event_id = serializers.UUIDField(read_only=True)
    event_type = serializers.CharField(source="event.type", read_only=True)
    endpoint_id = serializers.UUIDField(read_only=True)

    class Meta:
        model = Delivery
        fields = [
            "id",
            "event_id",
            "event_type",
            "endpoint_id",
            "status",
            "attempts",
            "next_attempt_at",
            "last_status_code",
            "last_error",
            "last_latency_ms",
            "last_attempt_at",
            "delivered_at",
            "dead_at",
            "created_at",
        ]
