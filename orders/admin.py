from django.contrib import admin

from orders.models import Order, OrderItem, Refund


class OrderItemInline(admin.TabularInline):
    model = OrderItem
    extra = 0
    readonly_fields = ("sku", "quantity", "unit_price")


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "status", "currency", "total_amount", "created_at")
    list_filter = ("status", "currency")
    search_fields = ("id", "owner__email")
    readonly_fields = ("id", "owner", "currency", "total_amount", "created_at", "updated_at")
    inlines = [OrderItemInline]


@admin.register(Refund)
class RefundAdmin(admin.ModelAdmin):
    """Read-only: a refund moves only through orders.refunds (the amounts must add up)."""

    list_display = ("id", "order", "status", "amount", "currency", "attempts", "created_at")
    list_filter = ("status", "currency")
    search_fields = ("id", "order__id", "order__owner__email")
    readonly_fields = [f.name for f in Refund._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
