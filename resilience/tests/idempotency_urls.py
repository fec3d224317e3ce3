"""URLs of the idempotency tests: the project's URLs plus the test-only views."""

from django.urls import path

from config.urls import urlpatterns as project_urlpatterns
from resilience.tests import idempotency_views as views

urlpatterns = [
    path("test/idem/orders", views.PhasedOrderApi.as_view()),
    path("test/idem/orders-elsewhere", views.PhasedOrderApi.as_view()),
    path("test/idem/other", views.OtherScopeApi.as_view()),
    path("test/idem/required", views.RequiredKeyApi.as_view()),
    *project_urlpatterns,
]
