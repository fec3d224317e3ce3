"""Project-wide plumbing: the error model, request ids, JSON logs, health endpoints."""
