from django.conf import settings
from rest_framework import serializers

from webhooks.models import Delivery, DeliveryStatus, Endpoint


class EndpointCreateInputSerializer(serializers.Serializer):
    # Scheme and address are checked by the service (422 with a reason): SSRF guard.
    url = serializers.URLField(max_length=2048)
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=settings.WEBHOOKS_EVENT_TYPES),
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


class DeliveryListInputSerializer(serializers.Serializer):
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
