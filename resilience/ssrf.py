"""Calls to URLs that users chose (webhook targets), guarded against SSRF.

Two layers, each doing what it can do best:

1. :func:`check_target`, at registration (a 422 with the reason) and again just before
   every delivery: http(s) only, a host, and every address the host resolves to is
   public or allowlisted (``WEBHOOKS_ALLOWED_TARGETS``). Hand-written because
   requests-hardened has no allowlist (only "allow loopback") and can only judge a URL by
   sending a request to it.
2. At connect time, requests-hardened's ``IPFilterAdapter`` (Saleor's maintained
   library; preferred to our own adapter) resolves the host once more, refuses private,
   loopback, link-local, multicast and reserved addresses, and pins the connection to the
   address it checked, so a DNS answer that changes between layer 1 and the connection
   (DNS rebinding) cannot reach an internal address. Its one exception, loopback, is
   switched on only when the allowlist admits a loopback address (development, tests).
   Consequence: allowlisting a private, non-loopback network (10.0.0.0/8) passes layer 1
   but is still refused by layer 2; supporting that would need our own pinning adapter.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress, _is_ip_in_extra_blocked_ranges

from resilience.http import ResilientSession, client

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOWED_SCHEMES = frozenset({"http", "https"})
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

# Exceptions of an outbound call, for callers that must not import requests themselves.
REQUEST_ERRORS: tuple[type[BaseException], ...] = (requests.RequestException,)
TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (requests.Timeout,)
# requests-hardened refused the address at connect time (layer 2).
FORBIDDEN_ADDRESS_ERRORS: tuple[type[BaseException], ...] = (InvalidIPAddress,)


class ForbiddenTargetError(ValueError):
    """The URL may not be called; ``reason`` is a stable machine code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True)
class Allowlist:
    """Parsed ``WEBHOOKS_ALLOWED_TARGETS``: IP addresses/networks, and exact host names."""

    networks: tuple[IPNetwork, ...]
    hostnames: frozenset[str]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allowlist:
        networks, hostnames = [], set()
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hostnames.add(entry)
        return cls(tuple(networks), frozenset(hostnames))

    def admits(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    @property
    def allows_loopback(self) -> bool:
        """Whether layer 2 must let loopback through (an allowlisted name may be local)."""
        return bool(self.hostnames) or any(
            network.overlaps(loopback)
            for network in self.networks
            for loopback in LOOPBACK_NETWORKS
            if network.version == loopback.version
        )


def is_forbidden_address(address: IPAddress) -> bool:
    """Private, loopback, link-local, multicast, reserved, unspecified or not global."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or _is_ip_in_extra_blocked_ranges(address)
    )


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (tests replace this function, nothing else)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def check_target(url: str, *, allowed: Sequence[str]) -> None:
    """Raise :class:`ForbiddenTargetError` unless ``url`` is a callable public target."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ForbiddenTargetError("invalid_url", f"Not a valid URL: {exc}.") from exc
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise ForbiddenTargetError("scheme_not_allowed", "Only http and https URLs are accepted.")
    host = (parts.hostname or "").lower()
    if not host:
        raise ForbiddenTargetError("invalid_url", "The URL has no host.")
    allowlist = Allowlist.parse(allowed)
    if host in allowlist.hostnames:
        return
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise ForbiddenTargetError(
                "unresolvable_host", f"The host {host!r} does not resolve."
            ) from exc
    for address in addresses:
        if is_forbidden_address(address) and not allowlist.admits(address):
            raise ForbiddenTargetError(
                "forbidden_address",
                f"The host {host!r} resolves to {address}, a private, loopback, link-local, "
                "multicast or reserved address.",
            )


def hardened_session_factory(*, allow_loopback: bool) -> Callable[[int], requests.Session]:
    """Sessions whose adapters refuse and pin addresses (layer 2) and never redirect."""

    def build(pool_size: int) -> requests.Session:
        session = HTTPSession(
            Config(
                ip_filter_enable=True,
                ip_filter_allow_loopback_ips=allow_loopback,
                never_redirect=True,  # a redirect could point anywhere, after our checks
                default_timeout=None,  # the resilient client always passes its own
            )
        )
        for adapter in session.adapters.values():
            # The IPFilterAdapter keeps HTTPAdapter's defaults (10 connections, no
            # retries); size it like the resilient client's own adapter.
            adapter.init_poolmanager(pool_size, pool_size, block=False)
        return session

    return build


def guarded_client(dependency: str, *, allowed: Sequence[str]) -> ResilientSession:
    """The resilient client of ``dependency`` (``webhook:<host>``) with the SSRF guard."""
    allow_loopback = Allowlist.parse(allowed).allows_loopback
    return client(
        dependency, session_factory=hardened_session_factory(allow_loopback=allow_loopback)
    )
