"""App configs of the project itself."""

from django.contrib.admin.apps import AdminConfig


class RateLimitedAdminConfig(AdminConfig):
    """``django.contrib.admin`` with :class:`config.admin.RateLimitedAdminSite` as its site."""

    default_site = "config.admin.RateLimitedAdminSite"
