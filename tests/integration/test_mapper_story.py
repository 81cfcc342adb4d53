"""The mapper's story on the real broker: webhook changes, a full sync with real-time
changes held behind its barrier, a kill -9 in the middle, a cancelled sync.

The changes, full-sync records and SyncControls are produced as ingest produces them
(same topics, keys and partitioner), so the mapper runs exactly as in production.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Message, Producer

from services.core.codecs import load_contracts
from services.core.contracts import (
    ContactChange,
    ControlKind,
    Operation,
    Origin,
    PartitionOffset,
    ProfileUpdate,
    SyncControl,
)
from tests.support.broker_fixtures import ReadAll, end_offsets
from tests.support.polling import wait_for
from tests.support.services import Stack, held_changes

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()
T0 = datetime(2026, 5, 1, tzinfo=UTC)


class Ingest:
    """Produces as ingest does: idempotent, acks=all, the default partitioner."""

    def __init__(self, bootstrap: str, stack: Stack) -> None:
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"}
        )
        self._stack = stack
        self._bootstrap = bootstrap
        self.fullsync_ends: dict[int, int] = {}

    def change(
        self, record: str, name: str, minute: int, *, topic: str = "changes", flush: bool = True
    ) -> None:
        origin = Origin.FULL_SYNC if topic == "fullsync" else Origin.WEBHOOK
        change = ContactChange(
            source="demo",
            record_id=record,
            operation=Operation.UPSERT,
            event_id=uuid.uuid4().hex,
            source_modified_at=T0 + timedelta(minutes=minute),
            received_at=datetime.now(UTC),
            fields={"email": f"{record}@example.com", "first_name": name},
            origin=origin,
        )

        def delivered(error: KafkaError | None, message: Message) -> None:
            assert error is None
            partition, offset = message.partition(), message.offset()
            if topic == "fullsync" and partition is not None and offset is not None:
                ends = self.fullsync_ends
                ends[partition] = max(ends.get(partition, 0), offset + 1)

        self._producer.produce(
            self._stack.topic(topic),
            key=change.key,
            value=CONTRACTS.contact_change.encode(change),
            on_delivery=delivered,
        )
        if flush:
            self.flush()

    def flush(self) -> None:
        assert self._producer.flush(30) == 0

    def control(self, sync_id: str, kind: ControlKind) -> None:
        ends = tuple(PartitionOffset(p, o) for p, o in sorted(self.fullsync_ends.items()))
        # As ingest does: real-time changes from the current end of changes are held.
        starts = tuple(
            PartitionOffset(p, o)
            for p, o in sorted(end_offsets(self._bootstrap, self._stack.topic("changes")).items())
        )
        control = SyncControl(
            source="demo",
            sync_id=sync_id,
            kind=kind,
            at=datetime.now(UTC),
            fullsync_end_offsets=ends if kind is ControlKind.COMPLETED else (),
            changes_start_offsets=starts if kind is ControlKind.STARTED else (),
        )
        self._producer.produce(
            self._stack.topic("barrier"), key=b"demo", value=CONTRACTS.sync_control.encode(control)
        )
        assert self._producer.flush(30) == 0


def updates(
    read_topic: ReadAll, stack: Stack, count: int, *, timeout_s: float = 30
) -> list[ProfileUpdate]:
    """The first ``count`` updates; fewer when no more came within ``timeout_s``."""
    messages = read_topic(stack.topic("profile-updates"), count=count, timeout_s=timeout_s)
    # Per profile, in the order the writer would apply them.
    ordered = sorted(messages, key=lambda m: (m.partition(), m.offset()))
    return [CONTRACTS.profile_update.decode(m.value() or b"") for m in ordered]


def story(found: list[ProfileUpdate]) -> dict[str, list[str]]:
    names: dict[str, list[str]] = defaultdict(list)
    for update in found:
        names[update.record_id].append(str(update.attributes.get("first_name")))
    return dict(names)


def saw(log_path: Path, text: str) -> bool:
    return text in log_path.read_text(errors="replace")


@pytest.mark.timeout(300)
def test_held_changes_follow_the_full_sync_and_survive_kill_9(
    stack: Stack, kafka_bootstrap: str, read_topic: ReadAll
) -> None:
    stack.start("mapper")
    ingest = Ingest(kafka_bootstrap, stack)
    mapper_log = stack["mapper"].log_path

    # Webhook changes flow straight through.
    ingest.change("a", "Ann", 1)
    ingest.change("b", "Bob", 1)
    assert story(updates(read_topic, stack, 2)) == {"a": ["Ann"], "b": ["Bob"]}

    # A full sync starts: the source's real-time changes are held.
    ingest.control("s1", ControlKind.STARTED)
    assert wait_for(lambda: saw(mapper_log, "full sync s1 of demo: started"))
    ingest.change("a", "Anna", 30)
    ingest.change("c", "Cy", 30)
    ingest.change("a", "Ann", 1)  # a webhook retry of an applied change
    assert wait_for(lambda: held_changes(stack) == 3)
    assert len(updates(read_topic, stack, 3, timeout_s=3)) == 2

    # The full sync's records flow while real-time changes wait.
    ingest.change("a", "Ann (sync)", 20, topic="fullsync")
    ingest.change("b", "Bobby (sync)", 20, topic="fullsync")
    ingest.change("c", "Cy (old, sync)", 5, topic="fullsync")
    assert len(updates(read_topic, stack, 5)) == 5

    # kill -9 with three changes held: they are durable state, not memory.
    stack["mapper"].kill()
    stack.start("mapper")
    assert wait_for(lambda: held_changes(stack) == 3)

    ingest.control("s1", ControlKind.COMPLETED)
    assert wait_for(lambda: saw(mapper_log, "full sync s1 of demo: released"))
    found = updates(read_topic, stack, 8)
    # Held changes come after the sync's versions; the stale retry changes nothing.
    assert story(found) == {
        "a": ["Ann", "Ann (sync)", "Anna"],
        "b": ["Bob", "Bobby (sync)"],
        "c": ["Cy (old, sync)", "Cy"],
    }
    assert wait_for(lambda: held_changes(stack) == 0)

    # A second sync is cancelled: what it held is released.
    ingest.control("s2", ControlKind.STARTED)
    assert wait_for(lambda: saw(mapper_log, "full sync s2 of demo: started"))
    ingest.change("b", "Bo", 40)
    assert wait_for(lambda: held_changes(stack) == 1)
    ingest.control("s2", ControlKind.CANCELLED)
    final = updates(read_topic, stack, 8)
    assert story(final) == {
        "a": ["Ann", "Ann (sync)", "Anna"],
        "b": ["Bob", "Bobby (sync)", "Bo"],
        "c": ["Cy (old, sync)", "Cy"],
    }

    # Nothing applied twice: a restart replays nothing.
    stack["mapper"].kill()
    stack.start("mapper")
    time.sleep(2)
    again = updates(read_topic, stack, 9, timeout_s=10)
    assert [u.event_id for u in again] == [u.event_id for u in final]


@pytest.mark.timeout(400)
def test_kill_9_at_any_moment_loses_nothing_and_applies_nothing_twice(
    stack: Stack, kafka_bootstrap: str, read_topic: ReadAll
) -> None:
    records = [f"r{n}" for n in range(300)]
    stack.start("mapper")
    ingest = Ingest(kafka_bootstrap, stack)
    mapper = stack["mapper"]

    def kill_and_restart(*, forget_local_state: bool = False) -> None:
        mapper.kill()
        if forget_local_state:
            # The local RocksDB is only a copy: the changelog restores it.
            shutil.rmtree(stack.workdir / "mapper" / "state")
        stack.start("mapper")

    for record in records:
        ingest.change(record, f"{record} v1", 1, flush=False)
    ingest.flush()
    kill_and_restart()
    ingest.control("s1", ControlKind.STARTED)
    for record in records[::2]:
        ingest.change(record, f"{record} v3", 30, flush=False)
    ingest.flush()
    assert wait_for(lambda: held_changes(stack) == 150)
    time.sleep(1)
    kill_and_restart(forget_local_state=True)
    assert saw(mapper.log_path, "restored state records from the changelog")
    for index, record in enumerate(records):
        ingest.change(record, f"{record} v2", 20, topic="fullsync", flush=False)
        if index == 150:
            ingest.flush()
            kill_and_restart()
    ingest.flush()
    ingest.control("s1", ControlKind.COMPLETED)
    time.sleep(0.5)
    kill_and_restart()

    newest = {
        record: f"{record} v3" if n % 2 == 0 else f"{record} v2" for n, record in enumerate(records)
    }
    expected_count = 300 + 150  # every v2 and every held v3; a v1 only if mapped before v2
    found = updates(read_topic, stack, expected_count + 300, timeout_s=20)
    by_record = story(found)
    assert {record: names[-1] for record, names in by_record.items()} == newest
    for record, names in by_record.items():
        # Each version at most once, in version order: nothing applied twice, nothing
        # older after newer.
        assert names == sorted(set(names), key=lambda name: name[-1]), record
        assert f"{record} v2" in names
    assert len(found) - sum(1 for u in found if u.attributes["first_name"].endswith("v1")) == (
        expected_count
    )
    assert len({u.event_id for u in found}) == len(found)
