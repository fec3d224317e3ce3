"""Webhooks: endpoints, the transactional outbox and delivery (see its issue)."""
