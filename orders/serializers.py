from django.conf import settings
from rest_framework import serializers

from common.serializers import (
    QuerySerializer,
    StrictChoiceField,
    StrictIntegerField,
    StrictRegexField,
)
from orders.models import Order, OrderItem


class OrderItemInputSerializer(serializers.Serializer):
    sku = StrictRegexField(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", max_length=64)
    quantity = StrictIntegerField(min_value=1, max_value=settings.ORDERS_MAX_QUANTITY)
    unit_price = StrictIntegerField(min_value=0, max_value=settings.ORDERS_MAX_UNIT_PRICE)


class OrderCreateInputSerializer(serializers.Serializer):
    currency = StrictChoiceField(choices=settings.ORDERS_CURRENCIES)
    items = OrderItemInputSerializer(
        many=True, allow_empty=False, max_length=settings.ORDERS_MAX_ITEMS
    )


class OrderItemOutputSerializer(serializers.ModelSerializer):
    line_total = serializers.IntegerField(read_only=True)

    class Meta:
        model = OrderItem
        fields = ["sku", "quantity", "unit_price", "line_total"]


class OrderOutputSerializer(serializers.ModelSerializer):
    items = OrderItemOutputSerializer(many=True, read_only=True)

    class Meta:
        model = Order
        fields = ["id", "status", "currency", "total_amount", "items", "created_at", "updated_at"]


class OrderReportInputSerializer(QuerySerializer):
    days = serializers.IntegerField(
        min_value=1, max_value=settings.ORDERS_REPORT_MAX_DAYS, default=30
    )


class OrderReportRowSerializer(serializers.Serializer):
    day = serializers.DateField()
    status = serializers.CharField()
    currency = serializers.CharField()
    orders = serializers.IntegerField()
    total_amount = serializers.IntegerField()


class OrderReportOutputSerializer(serializers.Serializer):
    days = serializers.IntegerField()
    rows = OrderReportRowSerializer(many=True)
