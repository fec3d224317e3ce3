"""The client's IP address, which a client outside our proxies cannot choose.

``REMOTE_ADDR`` is the peer that opened the TCP connection. Only when that peer is one
of our trusted proxies do we read ``X-Forwarded-For``, from the right (the entries our
own proxies appended) to the left, and take the first address that is not a trusted
proxy. Everything left of it was written by the client and is ignored. IPv6 clients are
bucketed by prefix (a /64 by default), since one host owns the whole prefix.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from resilience.ratelimit.config import get_config

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_CACHE_ATTRIBUTE = "_resilience_client_ip"


def _parse(value: str) -> Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "203.0.113.7:5123"
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def resolve_client_ip(
    remote_addr: str,
    forwarded_for: str,
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> Address | None:
    """Pick the client address from the peer and ``X-Forwarded-For`` (pure function)."""
    peer = _parse(remote_addr or "")
    if peer is None or not any(peer in network for network in trusted):
        return peer
    client = peer
    for hop in reversed(forwarded_for.split(",")):
        candidate = _parse(hop)
        if candidate is None:
            break  # garbage: stop at the last hop our proxies vouched for
        client = candidate
        if not any(candidate in network for network in trusted):
            break
    return client


def client_ip(request: Any) -> str:
    """The bucket identity of the request's client, computed once per request.

    Works with a Django ``HttpRequest`` or a DRF ``Request`` (which wraps one).
    """
    http_request = getattr(request, "_request", request)
    cached = getattr(http_request, _CACHE_ATTRIBUTE, None)
    if cached is not None:
        return cached
    config = get_config()
    identity = _identity(
        http_request.META.get("REMOTE_ADDR", ""),
        http_request.META.get("HTTP_X_FORWARDED_FOR", ""),
        config.trusted_proxies,
        config.ipv6_prefix_length,
    )
    setattr(http_request, _CACHE_ATTRIBUTE, identity)
    return identity


@functools.lru_cache(maxsize=4096)
def _identity(
    remote_addr: str,
    forwarded_for: str,
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    ipv6_prefix_length: int,
) -> str:
    # Parsing addresses costs about 20 us per request, a tenth of the whole limit check;
    # a busy process sees the same few peers again and again, so the answer is cached.
    address = resolve_client_ip(remote_addr, forwarded_for, trusted)
    if address is not None and address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # "::ffff:203.0.113.7" is an IPv4 client
    if address is None:
        return "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/{ipv6_prefix_length}", strict=False))
    return str(address)


def ratelimit_ip_meta(request: Any) -> str:
    """``RATELIMIT_IP_META_KEY`` for django-ratelimit: the same client IP as our limiter."""
    identity = client_ip(request)
    if identity == "unknown":
        return str(ipaddress.IPv4Address(0))  # one shared bucket for unparseable peers
    return identity.split("/", 1)[0]
