"""Declared multi-phase idempotent operations: brandur's atomic phases, written once.

A service declares what each phase does; the library runs the phases in order, records
each atomic phase's recovery point on the idempotency record inside that phase's
transaction, resumes a retry (or the completer) after the last point reached, and
derives the keys sent downstream in one place (adr/0014-declared-phases.md)::

    ORDER_PLACEMENT = Operation(
        "order",                                  # downstream keys: "order-<id>"
        load=lambda order_id: Order.objects.get(id=order_id),
        phases=[
            atomic("order_created", create_order),   # returns the order
            call("authorize", authorize_payment),    # no transaction open
            atomic("payment_settled", settle),       # reads progress.result
        ],
    )
    ORDER_PLACEMENT.run(recovery=request.idempotency, respond=created, **inputs)

The kinds of phase:

- :func:`atomic`: one database transaction on the current workload's alias. Its writes
  and its recovery point commit together, so after a crash the record says exactly
  which atomic phases are done. The first atomic phase returns the *resource* (e.g. the
  order); its id is stored with the first recovery point and the resource is loaded
  again (``load``) on resume. A later phase may return the resource changed.
- :func:`call`: an outside call made between transactions (never inside one), e.g. the
  payment provider. It has no recovery point: on resume it runs again, with the same
  downstream key (:meth:`Progress.downstream_key`), so the provider deduplicates it. Its
  return value is ``progress.result`` for the next phase.

Cost (adr/0014): with a key, each atomic phase's recovery point is one UPDATE inside the
phase's own transaction, and the last one also stores the answer (``respond``), so the
claim is the only statement idempotency adds outside the work's transactions. Without a
key the same phases run in the same transactions and nothing is recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from resilience.db_routing import current_alias
from resilience.idempotency.keys import downstream_key
from resilience.idempotency.store import FINISHED, STARTED, IdempotencyContext, StoredResponse

PhaseFn = Callable[["Progress"], Any]


@dataclass(frozen=True)
class Atomic:
    """A phase that is one database transaction and ends at the recovery point ``name``."""

    name: str
    run: PhaseFn
    formerly: tuple[str, ...] = ()  # older names of this point, still found on records


@dataclass(frozen=True)
class Call:
    """A phase that calls outside the database, between transactions."""

    name: str
    run: PhaseFn


def atomic(point: str, run: PhaseFn, *, formerly: tuple[str, ...] = ()) -> Atomic:
    """Declare a transactional phase reaching the recovery point ``point``.

    ``formerly``: names this point had in earlier releases, so records written then
    resume after this phase (a rename must not strand a record mid-way).
    """
    return Atomic(point, run, formerly)


def call(name: str, run: PhaseFn) -> Call:
    """Declare an outside call (HTTP, broker) made with no transaction open."""
    return Call(name, run)


@dataclass
class Progress:
    """What a phase sees: the operation's inputs, its resource, the last call's result."""

    operation: Operation
    inputs: Mapping[str, Any]
    resource: Any = None
    result: Any = None
    resumed: bool = False

    def downstream_key(self, step: str = "") -> str:
        """The idempotency key for an outside call about this resource (one derivation)."""
        if self.resource is None:
            raise RuntimeError("a downstream key needs the resource of the first phase")
        return self.operation.downstream_key(self.resource.pk, step)


class _Unrecorded:
    """The recovery log of a request without an idempotency key: nothing is written."""

    recovery_point = STARTED
    resource_id = None

    def advance(self, point: str, *, resource_id: Any = None, last: bool = False) -> None:
        self.recovery_point = point

    def finish(self, response: Any, *, last: bool = False) -> Any:
        self.recovery_point = FINISHED
        return response


@dataclass(frozen=True)
class Operation:
    """A named sequence of phases acting on one resource, resumable from its records.

    ``namespace`` names the resource in downstream keys (``"order"`` gives
    ``"order-<id>"``); ``load(resource_id)`` fetches the resource again on resume.
    """

    namespace: str
    load: Callable[[str], Any]
    phases: Sequence[Atomic | Call] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        points = [phase.name for phase in self.phases if isinstance(phase, Atomic)]
        if not points or not isinstance(self.phases[0], Atomic):
            raise ValueError("an operation starts with an atomic phase that makes its resource")
        if len(set(points)) != len(points) or {STARTED, FINISHED} & set(points):
            raise ValueError(f"recovery points must be unique and not reserved: {points}")
        object.__setattr__(self, "phases", tuple(self.phases))

    def downstream_key(self, resource_id: Any, step: str = "") -> str:
        """The key an outside call about ``resource_id`` sends, from any path (retry,
        completer, background job): see :func:`resilience.idempotency.downstream_key`."""
        return downstream_key(self.namespace, resource_id, step)

    def with_phase(self, name: str, run: PhaseFn) -> Operation:
        """A copy with phase ``name`` doing ``run`` instead (fault injection in tests)."""
        if name not in {phase.name for phase in self.phases}:
            raise KeyError(name)
        phases = [
            dataclasses.replace(phase, run=run) if phase.name == name else phase
            for phase in self.phases
        ]
        return dataclasses.replace(self, phases=phases)

    def _start(self, point: str) -> int:
        """The index of the first phase still to run after recovery point ``point``."""
        if point == STARTED:
            return 0
        for index, phase in enumerate(self.phases):
            if isinstance(phase, Atomic) and point in (phase.name, *phase.formerly):
                return index + 1
        raise ValueError(f"{point!r} is not a recovery point of this operation")

    def run(
        self,
        *,
        recovery: IdempotencyContext | None = None,
        respond: Callable[[Any], Any] | None = None,
        **inputs: Any,
    ) -> Any:
        """Run the phases not yet done; return ``respond(resource)``, or the resource.

        ``recovery`` is the request's :class:`IdempotencyContext` (``request.idempotency``,
        None without a key) or the completer's. ``respond`` builds the answer from the
        final resource inside the last atomic phase, where it is stored with that phase's
        work. ``inputs`` are for the phases (``progress.inputs``); a resumed run skips the
        phases that needed them.
        """
        log = recovery if recovery is not None else _Unrecorded()
        progress = Progress(self, inputs, resumed=log.recovery_point != STARTED)
        start = self._start(log.recovery_point)
        if start:
            progress.resource = self.load(log.resource_id)
        last_atomic = max(i for i, p in enumerate(self.phases) if isinstance(p, Atomic))
        for index in range(start, len(self.phases)):
            phase = self.phases[index]
            if isinstance(phase, Call):
                progress.result = phase.run(progress)
                continue
            with transaction.atomic(using=current_alias()):
                made = phase.run(progress)
                first = progress.resource is None
                if made is not None:
                    progress.resource = made
                if progress.resource is None:
                    raise TypeError(f"phase {phase.name!r} must return the resource it made")
                if index == last_atomic and respond is not None:
                    return log.finish(respond(progress.resource), last=True)
                resource_id = progress.resource.pk if first else None
                log.advance(phase.name, resource_id=resource_id, last=True)
        return respond(progress.resource) if respond is not None else progress.resource

    def completer(
        self, respond: Callable[[Any], StoredResponse]
    ) -> Callable[[IdempotencyContext], StoredResponse | None]:
        """A completer (``register_completer(scope, op.completer(respond))``) that finishes
        a record left mid-way as a resumed request would, storing ``respond(resource)``.
        A record still at ``started`` is left alone: nothing durable happened, so the
        client's retry or the purge decides."""

        def complete(ctx: IdempotencyContext) -> StoredResponse | None:
            if ctx.recovery_point == STARTED:
                return None
            return self.run(recovery=ctx, respond=respond)

        return complete


__all__ = ["Atomic", "Call", "Operation", "Progress", "atomic", "call"]
