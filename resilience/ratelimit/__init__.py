"""Rate limiting: token buckets in one atomic Redis script, with a per-process fallback.

Public surface:

* :class:`~resilience.ratelimit.middleware.RateLimitMiddleware`: the global per-IP
  flood limit before authentication, and the ``RateLimit`` header fields.
* :func:`~resilience.ratelimit.throttles.throttle`: a DRF throttle naming policies,
  declared in one line on a view (``throttle_classes = [throttle("login_ip", ...)]``).
* :func:`~resilience.ratelimit.business.business_ratelimit`: fixed-window business rules
  on django-ratelimit, answered as 429.
* :func:`~resilience.ratelimit.decisions.check_request` and
  :class:`~resilience.ratelimit.limiter.Limiter` for anything else.

Policies live in ``settings.RESILIENCE_RATELIMIT``; see ``docs/patterns/
token-bucket-rate-limiting.md`` and ``adr/0004-rate-limit-storage-and-algorithm.md``.
Submodules are imported where used, so importing this package stays cheap.
"""
