"""URL map: the versioned API, health, metrics (network-restricted in production), schema, admin."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from common import views as common_views

api_v1 = [
    path("auth/", include("accounts.urls")),
    path("", include("orders.urls")),
    path("webhooks/", include("webhooks.urls")),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("healthz", common_views.healthz, name="healthz"),
    path("readyz", common_views.readyz, name="readyz"),
    # django_prometheus's exporter (with shared breaker state read at scrape time,
    # common.metrics_export) behind the network check of METRICS_ALLOWED_NETWORKS.
    path("metrics", common_views.metrics, name="prometheus-django-metrics"),
    path("admin/", admin.site.urls),
]

handler400 = "common.views.bad_request"
handler403 = "common.views.permission_denied"
handler404 = "common.views.not_found"
handler500 = "common.views.server_error"
