from django.contrib import admin

from orders.models import Order, OrderItem


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
