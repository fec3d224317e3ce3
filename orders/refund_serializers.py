from django.conf import settings
from rest_framework import serializers

from common.serializers import StrictCharField, StrictChoiceField, StrictIntegerField
from orders.models import Refund

# The largest order total the order serializers accept; no refund can be larger.
MAX_ORDER_TOTAL = (
    settings.ORDERS_MAX_ITEMS * settings.ORDERS_MAX_QUANTITY * settings.ORDERS_MAX_UNIT_PRICE
)


class RefundCreateInputSerializer(serializers.Serializer):
    amount = StrictIntegerField(
        min_value=1, max_value=MAX_ORDER_TOTAL, help_text="Minor units of the order's currency."
    )
    reason = StrictCharField(
        max_length=Refund._meta.get_field("reason").max_length,
        required=False,
        allow_blank=True,
        default="",
    )
    currency = StrictChoiceField(
        choices=settings.ORDERS_CURRENCIES,
        required=False,
        help_text="Optional; when sent it must be the order's currency.",
    )


class RefundOutputSerializer(serializers.ModelSerializer):
    order_id = serializers.UUIDField(read_only=True)

    class Meta:
        model = Refund
        fields = [
            "id",
            "order_id",
            "status",
            "amount",
            "currency",
            "reason",
            "created_at",
            "updated_at",
        ]
