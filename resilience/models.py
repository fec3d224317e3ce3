"""Tables of the resilience library.

``IdempotencyRecord`` is one row per (principal, Idempotency-Key): brandur's design for
Stripe-like keys in Postgres (docs/patterns/idempotency-keys.md, adr/0005).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class IdempotencyRecord(models.Model):
    """What a client's request with an ``Idempotency-Key`` did, and how far it got.

    States (derived, see ``state``): *in flight* while ``locked_at`` is younger than the
    lock timeout; *resumable* when unlocked and unfinished (an attempt crashed or answered
    5xx: the next attempt resumes from ``recovery_point``); *finished* once a response is
    stored (``recovery_point == "finished"``), after which the response is only replayed.
    """

    STARTED = "started"
    FINISHED = "finished"

    principal = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    key = models.CharField(max_length=255)
    scope = models.CharField(
        max_length=100, help_text='What the key protects, e.g. "orders.create".'
    )
    request_method = models.CharField(max_length=10)
    request_path = models.CharField(max_length=2048)
    fingerprint = models.CharField(
        max_length=64, help_text="SHA-256 hex of method, path, query and canonical JSON body."
    )
    recovery_point = models.CharField(max_length=64, default=STARTED)
    resource_id = models.CharField(
        max_length=64, blank=True, default="", help_text="E.g. the order created by phase 1."
    )
    locked_at = models.DateTimeField(null=True, blank=True)
    # Fencing token of the current lock holder: every write by a holder is conditional on
    # it, so a holder whose lock expired and was taken over can no longer write.
    lock_token = models.UUIDField(null=True, blank=True, editable=False)
    last_run_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=1)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    # The exact bytes sent (UTF-8 JSON text), not jsonb: jsonb reorders keys, and a replay
    # must be byte-identical to the first answer.
    response_body = models.TextField(blank=True, default="")
    response_headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "idempotency record"
        constraints = [
            # The composite key of the IETF draft: one client can never see another's key.
            models.UniqueConstraint(fields=["principal", "key"], name="idem_principal_key_uniq"),
        ]
        indexes = [
            # The purge deletes by age.
            models.Index(fields=["created_at"], name="idem_created_idx"),
            # The completer scans unfinished records by last run; finished ones (nearly
            # all rows) stay out of this partial index.
            models.Index(
                fields=["last_run_at"],
                name="idem_unfinished_idx",
                condition=~models.Q(recovery_point="finished"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scope} key {self.key!r} ({self.recovery_point})"

    @property
    def is_finished(self) -> bool:
        return self.recovery_point == self.FINISHED
