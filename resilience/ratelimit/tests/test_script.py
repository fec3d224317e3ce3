"""The Lua token bucket against a real Redis: one round trip, atomic, all-or-nothing."""

from __future__ import annotations

import json
import os
import random
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from resilience.ratelimit.config import get_config
from resilience.ratelimit.limiter import Limiter
from resilience.ratelimit.storage import (
    Bucket,
    LocalBucketStore,
    RedisBucketStore,
    StoreUnavailableError,
)
from tests.ratelimit_support import FakeClock, ratelimit_settings

MONITOR_TIMEOUT_S = 10


def bucket(key: str, capacity: float, per_second: float, **kwargs) -> Bucket:
    return Bucket(key=key, capacity=capacity, interval_s=1 / per_second, **kwargs)


@pytest.fixture
def redis_store(own_redis, fake_clock):
    return RedisBucketStore(own_redis.client(), clock=fake_clock)


def command_stats(client) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in client.info("commandstats").items()
    }


def test_each_decision_is_exactly_one_evalsha(settings, own_redis):
    """INFO commandstats: N decisions -> N EVALSHA, and no other command from the client."""
    ratelimit_settings(
        settings,
        redis_url=own_redis.url,
        policies={
            "t_ip": {"capacity": 5, "refill_rate": 1.0, "scope": "ip"},
            "t_user": {"capacity": 3, "refill_rate": 1.0, "scope": "user"},
        },
    )
    config = get_config()
    limiter = Limiter()  # Redis' own clock, as in production
    one = [(config.policy("t_ip"), "192.0.2.1")]
    two = [(config.policy("t_ip"), "192.0.2.2"), (config.policy("t_user"), "user:1")]
    limiter.check(one)  # loads the script (NOSCRIPT -> SCRIPT LOAD) once
    inspector = own_redis.client()
    inspector.config_resetstat()

    decisions = 40
    buckets_checked = 0
    for i in range(decisions):
        checks = one if i % 2 else two
        buckets_checked += len(checks)
        decision = limiter.check(checks)
        assert decision.mode == "redis"

    stats = command_stats(inspector)
    assert stats.pop("evalsha") == decisions
    # Everything else ran inside the script (GET/SET per bucket, TIME once per decision)
    # or is this test's own bookkeeping.
    assert stats.pop("time") == decisions
    assert stats.pop("get") == buckets_checked
    assert set(stats) <= {"set", "config|resetstat", "info"}, stats


def test_a_decision_is_a_single_client_command_on_the_wire(settings, own_redis):
    """MONITOR shows one command per decision from the client; the rest is '[0 lua]'."""
    ratelimit_settings(
        settings,
        redis_url=own_redis.url,
        policies={
            "t_a": {"capacity": 5, "refill_rate": 1.0, "scope": "ip"},
            "t_b": {"capacity": 5, "refill_rate": 1.0, "scope": "global"},
        },
    )
    config = get_config()
    limiter = Limiter()
    checks = [(config.policy("t_a"), "198.51.100.1"), (config.policy("t_b"), "global")]
    limiter.check(checks)  # script loaded before we watch
    sentinel = f"done-{uuid.uuid4().hex}"
    lines: list[str] = []
    ready = threading.Event()

    def watch() -> None:
        with own_redis.client().monitor() as monitor:
            ready.set()
            for _ in range(1000):  # bounded: 3 decisions make a few dozen lines
                command = monitor.next_command()
                lines.append(f"{command['client_type']} {command['command']}")
                if sentinel in command["command"]:
                    return

    probe = own_redis.client()
    probe.ping()  # connect (HELLO, CLIENT SETINFO) before anyone watches
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(MONITOR_TIMEOUT_S)
    for _ in range(3):
        limiter.check(checks)
    probe.echo(sentinel)
    watcher.join(MONITOR_TIMEOUT_S)
    assert not watcher.is_alive(), "MONITOR never saw the sentinel"

    from_client = [line for line in lines if not line.startswith("lua")]
    evalshas = [line for line in from_client if line.split(" ", 2)[1].upper() == "EVALSHA"]
    assert len(evalshas) == 3, lines
    assert {line.split(" ", 2)[1].upper() for line in from_client} <= {"EVALSHA", "ECHO"}
    from_lua = [line for line in lines if line.startswith("lua")]
    assert from_lua, "the bucket reads and writes happen inside the script"


def test_concurrent_decisions_never_overspend_a_bucket(redis_store):
    """64 concurrent callers, 37 tokens, frozen clock: exactly 37 pass, both buckets agree."""
    a, b = f"t:{uuid.uuid4().hex}:a", f"t:{uuid.uuid4().hex}:b"
    buckets = [bucket(a, 37, 0.001), bucket(b, 50, 0.001)]

    def attempt(_: int) -> bool:
        return redis_store.consume(buckets)[0]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(attempt, range(64)))

    assert sum(results) == 37
    _, states = redis_store.consume([bucket(a, 37, 0.001, cost=0), bucket(b, 50, 0.001, cost=0)])
    assert [s.remaining for s in states] == [0, 13]


def test_a_flushed_script_cache_is_refilled_within_the_same_decision(redis_store, own_redis):
    """After SCRIPT FLUSH (or a restarted Redis) the next decision loads the script once."""
    key = f"t:{uuid.uuid4().hex}"
    assert redis_store.consume([bucket(key, 5, 1.0)])[0]
    inspector = own_redis.client()
    inspector.script_flush()
    inspector.config_resetstat()

    allowed, [state] = redis_store.consume([bucket(key, 5, 1.0)])

    assert allowed
    assert state.remaining == 3
    assert command_stats(inspector).get("script|load") == 1


def test_a_connection_that_timed_out_is_never_reused(own_redis, fake_clock):
    """A reply still in flight after a timeout must not answer the next decision."""
    client = redis.Redis(port=own_redis.port, socket_timeout=0.1, socket_connect_timeout=0.1)
    store = RedisBucketStore(client, clock=fake_clock)
    small, large = (
        bucket(f"t:{uuid.uuid4().hex}", 5, 1.0),
        bucket(f"t:{uuid.uuid4().hex}", 100, 1.0),
    )
    assert store.consume([small])[0]  # connected and script loaded
    own_redis.pause()
    try:
        with pytest.raises(StoreUnavailableError):
            store.consume([small])
    finally:
        own_redis.resume()

    allowed, [state] = store.consume([large])

    # Reusing the connection would read the paused call's reply about `small` (3 left).
    assert allowed
    assert state.remaining == 99


def test_a_forked_child_never_shares_the_parents_connection(redis_store):
    """After a fork each side talks over its own socket and gets its own replies."""

    def socket_in_use() -> int:
        return redis_store._thread.connection[1]._sock.fileno()

    small, large = (
        bucket(f"t:{uuid.uuid4().hex}", 5, 1.0),
        bucket(f"t:{uuid.uuid4().hex}", 100, 1.0),
    )
    assert redis_store.consume([small])[0]  # the parent's thread now holds a connection
    parent_socket = socket_in_use()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which must never return
        code = 1
        try:
            remaining = [redis_store.consume([large])[1][0].remaining for _ in range(20)]
            os.write(write_end, json.dumps([socket_in_use(), remaining]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    parent_remaining = [redis_store.consume([small])[1][0].remaining for _ in range(3)]
    _, status = os.waitpid(child, 0)
    with os.fdopen(read_end) as pipe:
        child_socket, child_remaining = json.loads(pipe.read())

    assert os.waitstatus_to_exitcode(status) == 0
    assert child_socket != parent_socket
    assert child_remaining == list(range(99, 79, -1))
    assert parent_remaining == [3, 2, 1]


def test_nothing_is_consumed_unless_every_enforced_bucket_allows(redis_store):
    tight, loose = f"t:{uuid.uuid4().hex}", f"t:{uuid.uuid4().hex}"
    buckets = [bucket(tight, 1, 0.01), bucket(loose, 10, 0.01)]
    outcomes = [redis_store.consume(buckets) for _ in range(5)]
    assert [allowed for allowed, _ in outcomes] == [True, False, False, False, False]
    _allowed, states = outcomes[-1]
    assert not states[0].ok
    assert states[1].ok
    assert states[1].remaining == 9  # only the one admitted request took a token


def test_refill_follows_the_clock_capacity_plus_rate_times_seconds(redis_store, fake_clock):
    key = f"t:{uuid.uuid4().hex}"
    shape = bucket(key, 10, 4.0)  # 10 at once, then 4 per second
    admitted = 0
    for _ in range(20):  # drains the burst
        admitted += redis_store.consume([shape])[0]
    assert admitted == 10
    for _ in range(24):  # 3 s in steps of 1/8 s (exact in binary), asking 3 times per step
        fake_clock.advance(0.125)
        admitted += sum(redis_store.consume([shape])[0] for _ in range(3))
    assert admitted == 10 + 4 * 3


def test_retry_after_and_next_token_are_what_the_bucket_allows(redis_store, fake_clock):
    key = f"t:{uuid.uuid4().hex}"
    shape = bucket(key, 2, 0.5)  # a token every 2 s
    assert redis_store.consume([shape])[0]
    assert redis_store.consume([shape])[0]
    fake_clock.advance(0.5)
    allowed, [state] = redis_store.consume([shape])
    assert not allowed
    assert state.remaining == 0
    assert state.retry_after_s == pytest.approx(1.5)
    assert state.next_token_s == pytest.approx(1.5)
    assert state.reset_s == pytest.approx(3.5)
    fake_clock.advance(1.499)
    assert not redis_store.consume([shape])[0]  # a millisecond early is still early
    fake_clock.advance(0.002)
    assert redis_store.consume([shape])[0]


def test_dry_run_buckets_never_block_and_keep_counting(redis_store):
    enforced, dry = f"t:{uuid.uuid4().hex}", f"t:{uuid.uuid4().hex}"
    buckets = [bucket(enforced, 10, 0.01), bucket(dry, 2, 0.01, enforce=False)]
    outcomes = [redis_store.consume(buckets) for _ in range(4)]
    assert all(allowed for allowed, _ in outcomes)
    assert [states[1].ok for _, states in outcomes] == [True, True, False, False]
    assert outcomes[-1][1][0].remaining == 6


def test_keys_expire_once_the_bucket_is_full_again(redis_store, own_redis):
    key = f"t:{uuid.uuid4().hex}"
    redis_store.consume([bucket(key, 5, 1.0, cost=2)])
    ttl_ms = own_redis.client().pttl(key)
    assert 0 < ttl_ms <= 2001  # two tokens at 1/s: full again after 2 s


def test_the_local_fallback_runs_the_same_algorithm(redis_store, fake_clock):
    """Same requests, same clock: the in-memory store answers exactly like the script."""
    local = LocalBucketStore(max_keys=100, clock=fake_clock)
    rng = random.Random(4)
    prefix = uuid.uuid4().hex
    shapes = [
        bucket(f"t:{prefix}:x", 3, 2.0),
        bucket(f"t:{prefix}:y", 5, 0.5),
        bucket(f"t:{prefix}:z", 2, 1.0, enforce=False),
    ]
    for _ in range(300):
        fake_clock.advance(rng.choice([0, 0, 0.05, 0.3, 1.1]))
        chosen = rng.sample(shapes, rng.randint(1, 3))
        remote_allowed, remote = redis_store.consume(chosen)
        local_allowed, here = local.consume(chosen)
        assert remote_allowed == local_allowed
        assert [s.ok for s in remote] == [s.ok for s in here]
        assert [s.remaining for s in remote] == [s.remaining for s in here]
        for r, h in zip(remote, here, strict=True):
            assert r.retry_after_s == pytest.approx(h.retry_after_s, abs=2e-6)


def test_fallback_memory_is_bounded(fake_clock):
    local = LocalBucketStore(max_keys=50, clock=fake_clock)
    for i in range(500):
        local.consume([bucket(f"k{i}", 5, 0.001)])
        assert len(local) <= 50


def test_the_script_has_no_hidden_round_trips_in_its_source():
    """Guard against edits that would move work out of the script: one EVALSHA only."""
    from resilience.ratelimit import storage

    source = (storage.LUA_SOURCE).lower()
    assert "redis.call('time')" in source
    assert not re.search(r"\bkeys\s*\(", source)  # no KEYS command scans inside either


def test_fake_clock_is_a_plain_callable():
    clock = FakeClock(start=5)
    clock.advance(1.5)
    assert clock() == 6.5
