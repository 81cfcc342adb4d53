"""Brokers killed under a running crmsync: the mapper's transactions survive a broker
SIGKILL, partition-leader kills on a three-broker cluster, and a broker killed while
a restarted mapper initialises its transactions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from tests.faults.model import Load, audited_twice, check_store, check_updates
from tests.faults.running import SteadyLoad, Supervisor
from tests.support.kafka import LocalKafka
from tests.support.polling import wait_for
from tests.support.services import Stack

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# A restarted pipeline must have everything acknowledged out within this bound.
RECOVERY_BOUND_S = 120
TOPIC_ROLES = (
    "changes",
    "fullsync",
    "barrier",
    "profile_updates",
    "rejected",
    "audit",
    "connector_state",
    "schemas",
    "mapper_state",
)


@pytest.fixture
def one_broker() -> Iterator[LocalKafka]:
    # Its controller listens 100 ports up: clear of the three-broker cluster at 19800.
    cluster = LocalKafka(name="faults-one", port=19650)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(purge=True)


def replicated(stack: Stack) -> None:
    """Every topic on three replicas, writes needing two of them."""
    topics = stack.config["kafka"]["topics"]
    for role in TOPIC_ROLES:
        spec = topics.setdefault(role, {})
        spec["replication_factor"] = 3
        spec.setdefault("config", {})["min.insync.replicas"] = "2"
    if "mapper_state" in topics:
        topics["mapper_state"]["config"]["cleanup.policy"] = "compact"
        topics["mapper_state"].setdefault("partitions", topics["changes"]["partitions"])
    topics["connector_state"]["config"]["cleanup.policy"] = "compact"
    topics["schemas"]["config"]["cleanup.policy"] = "compact"
    topics["connector_state"].setdefault("partitions", 1)
    topics["schemas"].setdefault("partitions", 1)
    topics["barrier"].setdefault("partitions", 1)
    topics["barrier"]["config"]["retention.ms"] = "-1"
    stack.write_config()


def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=30)
    return int(metadata.topics[topic].partitions[partition].leader)


@pytest.mark.timeout(420)
def test_a_broker_killed_during_mapper_transactions(one_broker: LocalKafka, tmp_path: Path) -> None:
    stack = Stack(bootstrap=one_broker.bootstrap, workdir=tmp_path / "stack")
    try:
        stack.start("mapper")
        supervisor = Supervisor(stack["mapper"]).start()
        load = Load(one_broker.bootstrap, stack.prefix)
        steady = SteadyLoad(load, records=200, rounds=12, pause_s=0.3).start()
        time.sleep(2)
        one_broker.kill_node(1)
        time.sleep(3)
        one_broker.start_node(1)
        started = time.monotonic()
        steady.finish()
        outcome = check_updates(load, since=started, timeout_s=RECOVERY_BOUND_S)
        supervisor.stop()
        outcome.assert_exact("broker killed (SIGKILL) during mapper transactions")
        print(f"[fault] mapper restarts by its supervisor: {supervisor.restarts}")
        assert audited_twice(one_broker.bootstrap, stack.prefix) == []
    finally:
        stack.stop()


@pytest.mark.timeout(600)
def test_partition_leader_killed_five_times_during_a_run(
    three_brokers: LocalKafka, tmp_path: Path
) -> None:
    bootstrap = three_brokers.bootstrap
    stack = Stack(bootstrap=bootstrap, workdir=tmp_path / "stack")
    try:
        replicated(stack)
        stack.start("mapper", "writer")
        supervisors = [Supervisor(stack[name]).start() for name in ("mapper", "writer")]
        load = Load(bootstrap, stack.prefix)
        steady = SteadyLoad(load, records=200, rounds=40, pause_s=0.3).start()
        for _kill in range(5):
            time.sleep(1.5)
            leader = leader_of(bootstrap, stack.topic("changes"), 0)
            three_brokers.kill_node(leader)
            time.sleep(2)
            three_brokers.start_node(leader)
        started = time.monotonic()
        steady.finish()
        outcome = check_store(load, stack.db_path, since=started, timeout_s=RECOVERY_BOUND_S)
        for supervisor in supervisors:
            supervisor.stop()
        outcome.assert_exact("partition leader killed 5 times (3 brokers)")
        print(f"[fault] restarts by supervisors: {[s.restarts for s in supervisors]}")
        assert audited_twice(bootstrap, stack.prefix) == []
    finally:
        stack.stop()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("broker_kill_after_s", [0.0, 0.7, 2.0])
def test_mapper_restarted_then_broker_killed_while_it_initialises(
    one_broker: LocalKafka, tmp_path: Path, broker_kill_after_s: float
) -> None:
    """The operator's bad day of the stalled-mapper report: the mapper is killed and
    restarted, then the broker node is killed and restarted while the new mapper
    fences its former self and initialises its transactions."""
    stack = Stack(bootstrap=one_broker.bootstrap, workdir=tmp_path / "stack")
    mapper = stack["mapper"]
    try:
        stack.start("mapper")
        load = Load(one_broker.bootstrap, stack.prefix)
        steady = SteadyLoad(load, records=200, rounds=12, pause_s=0.3).start()
        time.sleep(1.5)
        mapper.kill()
        mapper.start()
        supervisor = Supervisor(mapper).start()
        time.sleep(broker_kill_after_s)
        one_broker.kill_node(1)
        time.sleep(3)
        one_broker.start_node(1)
        started = time.monotonic()
        steady.finish()
        assert wait_for(mapper.ready, timeout_s=RECOVERY_BOUND_S), mapper.log_tail()
        outcome = check_updates(load, since=started, timeout_s=RECOVERY_BOUND_S)
        supervisor.stop()
        outcome.assert_exact(f"mapper restarted, broker killed {broker_kill_after_s}s later")
        print(f"[fault] mapper restarts by its supervisor: {supervisor.restarts}")
        assert outcome.recover_s < RECOVERY_BOUND_S
        assert audited_twice(one_broker.bootstrap, stack.prefix) == []
    finally:
        stack.stop()
