from django.urls import path

from orders import apis, refund_apis

# Mounted at /api/v1/ (no trailing slashes, as in the API reference).
urlpatterns = [
    path("orders", apis.OrderListCreateApi.as_view(), name="orders"),
    path("orders/report", apis.OrderReportApi.as_view(), name="orders-report"),
    path("orders/<uuid:order_id>", apis.OrderDetailApi.as_view(), name="order-detail"),
    path(
        "orders/<uuid:order_id>/refunds",
        refund_apis.OrderRefundsApi.as_view(),
        name="order-refunds",
    ),
]
