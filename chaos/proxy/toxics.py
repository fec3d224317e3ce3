"""Toxic definitions: what each type means, its attributes, and request validation.

The behaviour itself lives in :mod:`chaos.proxy.proxy`, where each connection applies
the toxics of its proxy to the bytes flowing through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from chaos.proxy.errors import BadRequest

UPSTREAM = "upstream"  # client -> upstream server
DOWNSTREAM = "downstream"  # upstream server -> client
STREAMS = (UPSTREAM, DOWNSTREAM)

# Every supported type with its attributes and their defaults (all in ms, or KB/s for rate).
TOXIC_TYPES: dict[str, dict[str, float]] = {
    "latency": {"latency": 0, "jitter": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "bandwidth": {"rate": 0},
    "slow_close": {"delay": 0},
}


@dataclass(eq=False)  # identity semantics: connections key their per-toxic state on the object
class Toxic:
    """One toxic of a proxy. Treated as immutable: an update builds a new object."""

    name: str
    type: str
    stream: str = DOWNSTREAM
    toxicity: float = 1.0
    attributes: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Any) -> Toxic:
        """Validate a ``POST /proxies/{name}/toxics`` body; raise :class:`BadRequest`."""
        if not isinstance(body, dict):
            raise BadRequest("toxic must be a JSON object")
        toxic_type = body.get("type")
        if toxic_type not in TOXIC_TYPES:
            raise BadRequest(f"unknown toxic type {toxic_type!r}; known: {sorted(TOXIC_TYPES)}")
        stream = body.get("stream") or DOWNSTREAM
        if stream not in STREAMS:
            raise BadRequest(f"stream must be 'upstream' or 'downstream', not {stream!r}")
        name = body.get("name") or f"{toxic_type}_{stream}"
        if not isinstance(name, str):
            raise BadRequest("toxic name must be a string")
        attributes = _attributes(toxic_type, TOXIC_TYPES[toxic_type], body.get("attributes"))
        return cls(name, toxic_type, stream, _toxicity(body.get("toxicity", 1.0)), attributes)

    def updated(self, body: Any) -> Toxic:
        """Return a copy with the ``toxicity`` and ``attributes`` of an update body merged in."""
        if not isinstance(body, dict):
            raise BadRequest("toxic update must be a JSON object")
        toxicity = _toxicity(body.get("toxicity", self.toxicity))
        attributes = _attributes(self.type, self.attributes, body.get("attributes"))
        return Toxic(self.name, self.type, self.stream, toxicity, attributes)

    def to_json(self) -> dict[str, Any]:
        """The Toxiproxy JSON representation."""
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }


def _toxicity(value: Any) -> float:
    if not _is_number(value) or not 0 <= value <= 1:
        raise BadRequest(f"toxicity must be a number between 0 and 1, not {value!r}")
    return float(value)


def _attributes(toxic_type: str, base: dict[str, float], given: Any) -> dict[str, float]:
    """Merge ``given`` over ``base``, rejecting unknown names and negative or non-numbers."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise BadRequest("attributes must be a JSON object")
    merged = dict(base)
    for key, value in given.items():
        if key not in TOXIC_TYPES[toxic_type]:
            raise BadRequest(f"{toxic_type} toxic has no attribute {key!r}")
        if not _is_number(value) or value < 0:
            raise BadRequest(f"attribute {key!r} must be a non-negative number, not {value!r}")
        merged[key] = value
    return merged


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `"latency": true` is a client bug worth rejecting.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
