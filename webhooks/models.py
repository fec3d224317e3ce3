"""Webhook endpoints, outbox events and deliveries arrive with the webhooks feature."""
