"""The library on a real Redis Cluster (3 masters + 3 replicas of our own, free ports).

The limiter's decisions over several policies stay in one slot and count as on one
Redis; keys that would span slots fail the decision (the caller falls back) instead of
raising; the cache's multi-key operations and the breaker state work; a killed master's
slots are served again after its replica's promotion without a restart.
"""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings
from django.test import override_settings

from fleet.procs import wait_for
from fleet.stack import Fleet, FleetSpec
from resilience.ratelimit.config import RedisOptions
from resilience.ratelimit.storage import (
    Bucket,
    RedisBucketStore,
    StoreUnavailableError,
    build_client,
)
from resilience.redis_client import client_from_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    fleet = Fleet(FleetSpec(run_dir=tmp_path_factory.mktemp("cluster")))
    try:
        fleet.start_redis_cluster()
        yield fleet
    finally:
        fleet.stop()


def store_on(fleet: Fleet) -> RedisBucketStore:
    options = RedisOptions(
        url=fleet.redis_cluster_url,
        max_connections=8,
        pool_timeout_s=0.05,
        socket_timeout_s=0.25,
        connect_timeout_s=0.25,
    )
    return RedisBucketStore(build_client(options))


def login_buckets(run: str) -> list[Bucket]:
    return [
        Bucket(key=f"rl:{{login}}:login_ip:203.0.113.7-{run}", capacity=30, interval_s=30),
        Bucket(key=f"rl:{{login}}:login_username:{run}", capacity=5, interval_s=180),
    ]


def test_a_two_policy_decision_runs_in_one_slot_and_counts_exactly(cluster):
    store = store_on(cluster)
    run = uuid.uuid4().hex
    verdicts = [store.consume(login_buckets(run))[0] for _ in range(7)]
    assert verdicts == [True] * 5 + [False] * 2  # the username bucket's 5, then refusals


def test_keys_in_several_slots_fail_the_decision_instead_of_raising(cluster):
    store = store_on(cluster)
    run = uuid.uuid4().hex
    spread = [Bucket(key=f"rl:a:{{{run}-{i}}}", capacity=5, interval_s=1) for i in range(8)]
    with pytest.raises(StoreUnavailableError):
        store.consume(spread)


def test_the_limiter_keys_of_policies_decided_together_share_a_slot(cluster):
    from resilience.ratelimit.config import get_config
    from resilience.ratelimit.limiter import Limiter

    config = get_config()
    client = client_from_url(cluster.redis_cluster_url)
    keys = [
        Limiter.key(config, config.policy("login_ip"), "203.0.113.9"),
        Limiter.key(config, config.policy("login_username"), "someone@example.com"),
    ]
    assert len({client.keyslot(key) for key in keys}) == 1
    flood = {
        client.keyslot(Limiter.key(config, config.policy("flood"), f"203.0.113.{i}"))
        for i in range(20)
    }
    assert len(flood) > 1, "buckets of a policy decided alone spread over the slots"


def test_the_cache_and_the_breaker_state_work_on_the_cluster(cluster):
    from django.core.cache.backends.base import DEFAULT_TIMEOUT

    from resilience import breaker_state
    from resilience.cache import ResilientRedisCache

    cache = ResilientRedisCache(cluster.redis_cluster_url, {"OPTIONS": {"socket_timeout": 0.25}})
    data = {f"k{i}-{uuid.uuid4().hex}": i for i in range(20)}  # keys over many slots
    cache.set_many(data, DEFAULT_TIMEOUT)
    assert cache.get_many(list(data)) == data
    cache.delete_many(list(data))
    assert cache.get_many(list(data)) == {}

    with override_settings(
        RESILIENCE={**settings.RESILIENCE, "breaker_state_redis_url": cluster.redis_cluster_url}
    ):
        breaker_state._state_client = None  # built again for the cluster
        try:
            client = breaker_state._shared_state_redis()
            client.hset(f"resilience:breaker:cluster-{uuid.uuid4().hex}", "state", "open")
            assert client.ping()
        finally:
            breaker_state._state_client = None


def test_decisions_come_back_after_a_master_is_killed_and_its_replica_promoted(cluster):
    store = store_on(cluster)
    run = uuid.uuid4().hex
    buckets = login_buckets(run)
    assert store.consume(buckets)[0]
    slot = store.client.keyslot(buckets[0].key)
    owner = store.client.nodes_manager.get_node_from_slot(slot).port
    proc = cluster.proc_on(owner)
    assert proc is not None
    proc.kill()
    try:
        with pytest.raises(StoreUnavailableError):
            store.consume(buckets)  # the master is gone: this decision falls back
        wait_for(cluster.cluster_ok, timeout=60, what="the replica promoted")
        # The slot map is re-read (at most once a second): the promoted replica answers,
        # and it kept the bucket: one token taken above, one now (replication is
        # asynchronous, so the write just before the kill may be lost: one token back).
        state = wait_for(
            lambda: _try(store, buckets), timeout=30, interval=0.2, what="decisions again"
        )
        assert state[1].remaining in {3, 4}
    finally:
        proc.start()


def _try(store, buckets):
    try:
        allowed, states = store.consume(buckets)
    except StoreUnavailableError:
        return None
    return states if allowed else None
