from django.urls import path

from webhooks import apis

# Mounted at /api/v1/webhooks/ (no trailing slashes, as in the API reference).
urlpatterns = [
    path("endpoints", apis.EndpointListCreateApi.as_view(), name="webhook-endpoints"),
    path("endpoints/<uuid:endpoint_id>", apis.EndpointDetailApi.as_view(), name="webhook-endpoint"),
    path(
        "endpoints/<uuid:endpoint_id>/ping",
        apis.EndpointPingApi.as_view(),
        name="webhook-endpoint-ping",
    ),
    path("deliveries", apis.DeliveryListApi.as_view(), name="webhook-deliveries"),
]
