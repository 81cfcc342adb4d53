"""A steady load on a running stack, and the kill -9 moments the fault tests choose."""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml
from confluent_kafka import (
    ConsumerGroupState,
    IsolationLevel,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from services.mapper.engine import DATA_DIR_ENV, INSTANCE_ID_ENV
from tests.faults.model import Load
from tests.support.services import ServiceProcess, Stack, free_port


@dataclass
class SteadyLoad:
    """Rounds of changes to ``records`` records on a thread, version by version, until
    ``rounds`` are sent or it is stopped; every change Kafka acknowledged is in
    ``load.acked``."""

    load: Load
    records: int
    rounds: int
    pause_s: float = 0.05
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SteadyLoad:
        self._thread = threading.Thread(target=self._run, name="steady-load")
        self._thread.start()
        return self

    def _run(self) -> None:
        for version in range(1, self.rounds + 1):
            for n in range(self.records):
                self.load.change(f"r{n}", version)
            # A broker may be away: the round's answers come when it is back.
            self.load.settle()
            if self._stop.wait(self.pause_s):
                return

    def finish(self, timeout_s: float = 300) -> None:
        """Wait until every round is sent."""
        assert self._thread is not None
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the load did not finish"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)


def wait_killed(service: ServiceProcess, *, timeout_s: float = 120) -> None:
    """The service killed itself at its crash point (SIGKILL: exit -9)."""
    assert service.process is not None
    code = service.process.wait(timeout=timeout_s)
    tail = service.log_tail()
    assert code == -9, f"{service.name} exited {code}, not at its crash point:\n{tail}"


def restart(service: ServiceProcess) -> float:
    """Start ``service`` again without a crash point; the monotonic time it started."""
    service.env.pop("CRMSYNC_CRASH_AT", None)
    started = time.monotonic()
    service.start()
    service.wait_ready()
    return started


def mapper_instance(stack: Stack, instance_id: str) -> ServiceProcess:
    """Another mapper process of ``stack``'s group, with its own instance id, data dir,
    HTTP port and log: the stack's config written again with that port beside it."""
    config = copy.deepcopy(stack.config)
    port = free_port()
    config["services"]["mapper"]["http"]["port"] = port
    config_path = stack.workdir / f"crmsync-{instance_id}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return ServiceProcess(
        name="mapper",
        config_path=config_path,
        log_path=stack.workdir / f"{instance_id}.log",
        port=port,
        env={INSTANCE_ID_ENV: instance_id, DATA_DIR_ENV: str(stack.workdir / instance_id)},
    )


def mapper_members(stack: Stack) -> dict[str, set[int]] | None:
    """Each member of the stack's mapper group with its partitions of ``changes``, by
    instance id, when the group is stable (None while it rebalances)."""
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    group = f"{stack.prefix}mapper"
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    if description.state != ConsumerGroupState.STABLE:
        return None
    return {
        str(member.group_instance_id): {
            tp.partition
            for tp in member.assignment.topic_partitions
            if tp.topic == stack.topic("changes")
        }
        for member in description.members
    }


def open_transaction(stack: Stack, partitions: set[int]) -> bool:
    """Whether a transaction is open on these partitions of the state changelog (what
    it wrote is past the end a read_committed reader may read)."""
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    topic = stack.topic("mapper-state")

    def ends(level: IsolationLevel) -> dict[int, int]:
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        wanted = {TopicPartition(topic, p): latest for p in partitions}
        found = admin.list_offsets(wanted, isolation_level=level, request_timeout=10)
        return {tp.partition: future.result().offset for tp, future in found.items()}

    committed, written = ends(IsolationLevel.READ_COMMITTED), ends(IsolationLevel.READ_UNCOMMITTED)
    return any(committed[p] < written[p] for p in partitions)


def transaction_held(stack: Stack, topic: str, *, wait_s: float = 1.0) -> bool:
    """Whether a transaction on ``topic`` stays open for ``wait_s``: what was written
    before is still past the end a read_committed reader may read after it. A live
    mapper's transactions close within it; a frozen one's does not."""
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    name = stack.topic(topic)
    partitions = set(admin.list_topics(name, timeout=10).topics[name].partitions)

    def ends(level: IsolationLevel) -> dict[int, int]:
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        wanted = {TopicPartition(name, p): latest for p in partitions}
        found = admin.list_offsets(wanted, isolation_level=level, request_timeout=10)
        return {tp.partition: future.result().offset for tp, future in found.items()}

    written = ends(IsolationLevel.READ_UNCOMMITTED)
    time.sleep(wait_s)
    committed = ends(IsolationLevel.READ_COMMITTED)
    return any(committed[p] < written[p] for p in partitions)


def freeze_mid_transaction(
    pid: int,
    inside: Callable[[], bool],
    *,
    backlog_s: float = 1.5,
    wakes_s: tuple[float, ...] = (0.03, 0.06, 0.09, 0.12),
    tries: int = 20,
) -> int:
    """SIGSTOP the mapper process ``pid`` at a moment ``inside()`` says it has a
    transaction open; returns the tries it took. Each try pauses it for ``backlog_s``
    while the load builds a backlog, lets it start on the long transaction that follows
    and freezes it inside, one of ``wakes_s`` later (woken again and retried when the
    freeze missed). A mapper with a small share of the load needs a longer pause for a
    transaction long enough to catch."""
    for attempt in range(1, tries + 1):
        os.kill(pid, signal.SIGSTOP)
        time.sleep(backlog_s)
        os.kill(pid, signal.SIGCONT)
        time.sleep(wakes_s[attempt % len(wakes_s)])
        os.kill(pid, signal.SIGSTOP)
        # A commit already on its way to the broker completes meanwhile.
        time.sleep(0.3)
        if inside():
            return attempt
        os.kill(pid, signal.SIGCONT)
        time.sleep(1)
    raise AssertionError(f"mapper never frozen inside a transaction in {tries} tries")


@dataclass
class Supervisor:
    """Restarts ``service`` whenever it exits, as an orchestrator's restart policy
    would (a loop that fails ends its process with code 1 so that it is restarted)."""

    service: ServiceProcess
    restarts: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            process = self.service.process
            # Exit 0 is a clean stop (SIGTERM), not a failure to restart after.
            if process is not None and process.poll() not in (None, 0):
                self.restarts += 1
                # A crash point fires once: the restarted process runs clean.
                self.service.env.pop("CRMSYNC_CRASH_AT", None)
                self.service.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
