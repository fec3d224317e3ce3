"""Production: secrets and hosts must come from the environment; HTTPS everywhere.

``manage.py check --deploy`` passes with these settings when ``DJANGO_SECRET_KEY``,
``DJANGO_ALLOWED_HOSTS`` and ``DATABASE_URL`` are set.
"""

from config.env import env
from config.settings.base import *

SECRET_KEY = env("DJANGO_SECRET_KEY")
ALLOWED_HOSTS = env("DJANGO_ALLOWED_HOSTS", cast=list)
DATABASE_URL = env("DATABASE_URL")
DEBUG = env("DJANGO_DEBUG", default=False, cast=bool)

# TLS terminates at the gateway, which sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env("DJANGO_SECURE_SSL_REDIRECT", default=True, cast=bool)
# Probes and the metrics scraper talk plain HTTP inside the cluster.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env("DJANGO_SECURE_HSTS_SECONDS", default=31536000, cast=int)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True

# /metrics is not public: only the scraper's networks read it (loopback unless set, e.g.
# METRICS_ALLOWED_NETWORKS=10.0.0.0/8). Judged on the client address the rate limiter
# trusts, so a request relayed by our gateway counts as the public client it came from.
METRICS_ALLOWED_NETWORKS = env(
    "METRICS_ALLOWED_NETWORKS", default=["127.0.0.0/8", "::1/128"], cast=list
)
