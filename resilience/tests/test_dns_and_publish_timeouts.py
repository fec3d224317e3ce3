"""DNS lookups of webhook targets and broker publishes are bounded (docs/timeouts.md).

A DNS server that never answers is a UDP socket on a free port that reads and never
replies; a broker that never answers is a TCP listener that accepts and stays silent.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from resilience import ssrf
from resilience.deadline import DeadlineExceededError, deadline
from resilience.publish import publish
from tests.silent_servers import silent_tcp_server, silent_udp_server

SLACK_S = 0.5  # thread start and scheduling on a busy machine, never a second try


def test_a_dns_server_that_never_answers_times_out_within_the_setting(settings):
    settings.DNS_RESOLVE_TIMEOUT_S = 0.5
    with silent_udp_server() as (port, received):
        settings.DNS_NAMESERVERS = [f"127.0.0.1:{port}"]
        started = time.monotonic()
        with pytest.raises(ssrf.ResolutionTimeoutError):
            ssrf.resolve("hooks.example.com", 443)
        elapsed = time.monotonic() - started
    assert received, "the resolver never asked our server"
    assert elapsed < settings.DNS_RESOLVE_TIMEOUT_S + SLACK_S


def test_the_dns_timeout_is_clipped_to_the_request_deadline(settings):
    settings.DNS_RESOLVE_TIMEOUT_S = 5.0
    with silent_udp_server() as (port, _):
        settings.DNS_NAMESERVERS = [f"127.0.0.1:{port}"]
        started = time.monotonic()
        with deadline(0.3), pytest.raises(ssrf.ResolutionTimeoutError):
            ssrf.check_target("https://hooks.example.com/x", allowed=[])
        assert time.monotonic() - started < 0.3 + SLACK_S


@pytest.mark.django_db
def test_registration_answers_503_when_dns_does_not_answer(auth_client, settings):
    settings.DNS_RESOLVE_TIMEOUT_S = 0.3
    with silent_udp_server() as (port, _):
        settings.DNS_NAMESERVERS = [f"127.0.0.1:{port}"]
        response = auth_client.post(
            "/api/v1/webhooks/endpoints",
            {"url": "https://hooks.example.com/in", "event_types": ["order.created"]},
            format="json",
        )
    assert response.status_code == 503, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert int(response["Retry-After"]) >= 1


def test_a_name_that_resolves_through_the_configured_server_is_checked(settings):
    """The dnspython path answers too: a real answer from a tiny in-test DNS server."""
    import dns.message
    import dns.rrset

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():  # A gets an address, AAAA an empty answer
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                continue
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            if question.rdtype == 1:  # A
                reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", "10.1.2.3"))
            sock.sendto(reply.to_wire(), peer)

    server = threading.Thread(target=answer, daemon=True)
    server.start()
    try:
        settings.DNS_NAMESERVERS = [f"127.0.0.1:{sock.getsockname()[1]}"]
        settings.DNS_RESOLVE_TIMEOUT_S = 2.0
        assert [str(a) for a in ssrf.resolve("internal.example.com", 443)] == ["10.1.2.3"]
        with pytest.raises(ssrf.ForbiddenTargetError) as refused:
            ssrf.check_target("https://internal.example.com/", allowed=[])
        assert refused.value.reason == "forbidden_address"
    finally:
        stop.set()
        server.join(timeout=5)
        sock.close()


def test_a_silent_broker_publish_is_clipped_to_the_request_deadline(settings):
    from webhooks.tasks import deliver

    app = deliver.app
    with silent_tcp_server() as (port, accepted):
        old_url = app.conf.broker_url
        app.conf.broker_url = f"redis://127.0.0.1:{port}/0"
        app.pool.force_close_all()
        app._pool = None
        try:
            started = time.monotonic()
            with deadline(0.5), pytest.raises(Exception) as failed:  # noqa: PT011 - kombu's
                publish(deliver, args=["00000000-0000-0000-0000-000000000000"])
            elapsed = time.monotonic() - started
        finally:
            app.conf.broker_url = old_url
            app._pool = None
    assert not isinstance(failed.value, DeadlineExceededError)  # it did try, and gave up
    assert accepted, "the publish never reached our broker"
    assert settings.CELERY_BROKER_SOCKET_TIMEOUT_S > 0.5  # so the clip is what bounded it
    assert elapsed < 0.5 + SLACK_S


def test_a_spent_budget_publishes_nothing():
    from webhooks.tasks import deliver

    with deadline(0.001):
        time.sleep(0.01)
        with pytest.raises(DeadlineExceededError):
            publish(deliver, args=["00000000-0000-0000-0000-000000000000"])


def test_the_connect_time_lookup_of_the_ssrf_guard_is_bounded_too(settings, monkeypatch):
    """Layer 2 (requests-hardened resolves again when it connects) gets the same bound.

    The system resolver cannot be pointed at a silent server, so its getaddrinfo is made
    to hang for one name: what a resolver that never answers looks like to the caller.
    """
    settings.DNS_RESOLVE_TIMEOUT_S = 0.3
    stuck = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def hanging_for_one_name(host, *args, **kwargs):
        if host == "hangs.example.test":
            stuck.wait(10)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging_for_one_name)
    session = ssrf.hardened_session_factory(allow_loopback=True)(2)
    started = time.monotonic()
    try:
        with pytest.raises(ssrf.ResolutionTimeoutError):
            session.get("http://hangs.example.test/hook", timeout=(1.0, 1.0))
        elapsed = time.monotonic() - started
    finally:
        stuck.set()
    assert elapsed < settings.DNS_RESOLVE_TIMEOUT_S + SLACK_S
