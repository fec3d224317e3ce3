"""Orders: the worst-case request path of the service (docs/worst-case-request.md)."""
