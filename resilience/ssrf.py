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

DNS is an outbound call too: layer 1's lookup is bounded by ``DNS_RESOLVE_TIMEOUT_S``
(clipped to the request deadline at registration), through the system resolver in a
worker thread, or through dnspython when ``DNS_NAMESERVERS`` names the servers. A lookup
that does not finish in time raises :class:`ResolutionTimeoutError` (a 503 at
registration, a deferred delivery). Layer 2's own lookup (requests-hardened's, at
connect) offers no timeout hook, so :class:`BoundedIPFilterAdapter` runs it within the
same bound.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import dns.exception
import dns.nameserver
import dns.resolver
import requests
from django.conf import settings
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress, _is_ip_in_extra_blocked_ranges
from requests_hardened.ip_filter_adapter import IPFilterAdapter

from resilience import deadline
from resilience.errors import DependencyUnavailableError
from resilience.http import ResilientSession, client

T = TypeVar("T")

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


class ResolutionTimeoutError(DependencyUnavailableError, TimeoutError):
    """A target's DNS lookup did not finish within ``DNS_RESOLVE_TIMEOUT_S``."""

    def __init__(self, host: str, timeout_s: float) -> None:
        self.host = host
        self.timeout_s = timeout_s
        super().__init__(
            "dns", detail=f"DNS lookup of {host!r} did not finish within {timeout_s:g} s"
        )


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


# Lookups running now in this process: a hung resolver must not pile up threads.
_in_flight = threading.BoundedSemaphore(64)


def _system_lookup(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def _nameserver(entry: str) -> dns.nameserver.Do53Nameserver:
    """``"10.0.0.2"``, ``"10.0.0.2:5353"`` or ``"[::1]:5353"``."""
    address, port = entry.strip(), 53
    if address.startswith("["):
        address, _, rest = address[1:].partition("]")
        port = int(rest.removeprefix(":") or 53)
    elif address.count(":") == 1:
        address, raw_port = address.split(":")
        port = int(raw_port)
    return dns.nameserver.Do53Nameserver(address, port)


def _dnspython_lookup(host: str, nameservers: Sequence[str], timeout_s: float) -> list[IPAddress]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [_nameserver(entry) for entry in nameservers]
    resolver.lifetime = timeout_s
    ends = time.monotonic() + timeout_s
    addresses: list[IPAddress] = []
    for rdtype in ("A", "AAAA"):
        left = ends - time.monotonic()
        if left <= 0:
            raise ResolutionTimeoutError(host, timeout_s)
        try:
            answer = resolver.resolve(host, rdtype, lifetime=left, search=False)
        except dns.resolver.NoAnswer:
            continue
        except dns.exception.Timeout as exc:
            raise ResolutionTimeoutError(host, timeout_s) from exc
        except dns.exception.DNSException as exc:  # NXDOMAIN, no nameservers, SERVFAIL...
            raise OSError(f"{host!r} does not resolve: {type(exc).__name__}") from exc
        addresses += [ipaddress.ip_address(record.address) for record in answer]
    if not addresses:
        raise OSError(f"{host!r} has no address")
    return addresses


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, within ``DNS_RESOLVE_TIMEOUT_S``.

    Raises :class:`ResolutionTimeoutError` when the lookup takes longer (or when too many
    lookups are already hung in this process), ``OSError`` when the name does not resolve.
    """
    timeout_s = deadline.clip(settings.DNS_RESOLVE_TIMEOUT_S)
    nameservers = list(settings.DNS_NAMESERVERS)
    if nameservers:
        return _within(timeout_s, host, lambda: _dnspython_lookup(host, nameservers, timeout_s))
    return _within(timeout_s, host, lambda: _system_lookup(host, port))


def _within(timeout_s: float, host: str, lookup: Callable[[], T]) -> T:
    """``lookup()`` in a worker thread, waited for at most ``timeout_s``.

    getaddrinfo has no timeout of its own. A thread still stuck after ``timeout_s`` ends
    when the system resolver gives up; ``_in_flight`` caps how many may be stuck at once.
    """
    if not _in_flight.acquire(blocking=False):
        raise ResolutionTimeoutError(host, timeout_s)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = lookup()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            outcome["error"] = exc
        finally:
            _in_flight.release()

    worker = threading.Thread(target=run, name=f"dns {host}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ResolutionTimeoutError(host, timeout_s)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


class BoundedIPFilterAdapter(IPFilterAdapter):
    """requests-hardened's adapter (layer 2) with its own DNS lookup bounded too.

    The adapter resolves the host again when it picks a connection pool, with a plain
    getaddrinfo; we run that step within ``DNS_RESOLVE_TIMEOUT_S`` (clipped to the
    deadline), like layer 1's lookup. A lookup that does not finish in time raises
    :class:`ResolutionTimeoutError`: the delivery is retried later.
    """

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host = urlsplit(request.url).hostname or ""
        timeout_s = deadline.clip(settings.DNS_RESOLVE_TIMEOUT_S)
        parent = super().build_connection_pool_key_attributes
        return _within(timeout_s, host, lambda: parent(request, verify, cert))


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
        except ResolutionTimeoutError:
            raise  # not the URL's fault: the caller answers 503 or retries later
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
        for prefix, https in (("http://", False), ("https://", True)):
            bounded = BoundedIPFilterAdapter(is_https_proto=https, allow_loopback=allow_loopback)
            session.mount(prefix, bounded)
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
