from django.urls import path

from orders import apis

# Mounted at /api/v1/ (no trailing slashes, as in the API reference).
urlpatterns = [
    path("orders", apis.OrderListCreateApi.as_view(), name="orders"),
    path("orders/report", apis.OrderReportApi.as_view(), name="orders-report"),
    path("orders/<uuid:order_id>", apis.OrderDetailApi.as_view(), name="order-detail"),
]
