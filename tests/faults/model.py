"""What the fault tests hold the engines to: a model of what Kafka acknowledged.

``Load`` produces changes as ingest does (idempotent, acks=all, the default
partitioner, the same keys) and remembers each change that Kafka acknowledged.
Every change of record R at version v sets ``first_name`` to "R v<v>", with v as its
modification time, so a record's newest acknowledged version is the value the
pipeline must end with, whatever order or path it took.

``check_updates`` reads the mapper's output (``profile-updates``, read_committed)
and ``check_store`` the writer's store, and both say, per run:

- acked: changes Kafka acknowledged; records: distinct records among them;
- stored: records whose final value is their newest acknowledged version;
- lost: records whose newest acknowledged version never arrived;
- duplicated: event ids emitted more than once (a change applied twice);
- regressions: records whose versions went back (an older value after a newer);
- seconds to recover: from the fault until the output held every acked change.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer

from services.core.codecs import load_contracts
from services.core.contracts import (
    ContactChange,
    ControlKind,
    Operation,
    Origin,
    PartitionOffset,
    SyncControl,
)
from tests.support.broker_fixtures import read_committed
from tests.support.store import query

CONTRACTS = load_contracts()
SOURCE = "demo"
# Every case's line, for the run's summary (tests/conftest.py prints them).
REPORTED: list[str] = []
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def value_of(record: str, version: int) -> str:
    return f"{record} v{version}"


def version_of(value: object) -> int:
    return int(str(value).rsplit(" v", 1)[1])


@dataclass
class Load:
    """Changes produced as ingest produces them; what Kafka acknowledged is kept."""

    bootstrap: str
    prefix: str
    acked: list[tuple[str, int, str, str]] = field(default_factory=list)
    """(record, version, event id, topic) of every acknowledged change."""
    failed: int = 0
    fullsync_ends: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 120_000,
            }
        )

    def topic(self, role: str) -> str:
        return f"{self.prefix}{role}"

    def change(self, record: str, version: int, *, topic: str = "changes") -> None:
        change = ContactChange(
            source=SOURCE,
            record_id=record,
            operation=Operation.UPSERT,
            event_id=uuid.uuid4().hex,
            source_modified_at=T0 + timedelta(seconds=version),
            received_at=datetime.now(UTC),
            fields={"email": f"{record}@example.com", "first_name": value_of(record, version)},
            origin=Origin.FULL_SYNC if topic == "fullsync" else Origin.WEBHOOK,
        )

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self.failed += 1
                return
            self.acked.append((record, version, change.event_id, topic))
            partition, offset = message.partition(), message.offset()
            if topic == "fullsync" and partition is not None and offset is not None:
                ends = self.fullsync_ends
                ends[partition] = max(ends.get(partition, 0), offset + 1)

        self._send(
            self.topic(topic), change.key, CONTRACTS.contact_change.encode(change), delivered
        )

    def raw(self, key: bytes, value: bytes, *, topic: str = "changes") -> None:
        """A message no connector would produce (poison), acknowledged but not modelled."""
        self._send(self.topic(topic), key, value, None)

    def _send(self, topic: str, key: bytes, value: bytes, on_delivery: object) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self, timeout_s: float = 120) -> None:
        assert self.settle(timeout_s) == 0, "the load's changes were not all sent"

    def settle(self, timeout_s: float = 120) -> int:
        """Wait for Kafka's answers; how many are still open (a broker away). What
        was not acknowledged is not in the model, whatever becomes of it."""
        return int(self._producer.flush(timeout_s))

    def control(self, sync_id: str, kind: ControlKind, *, changes_ends: dict[int, int]) -> None:
        """A SyncControl as ingest writes it: STARTED names where holding begins (the
        changes topic's current end), COMPLETED where this sync's records end."""
        control = SyncControl(
            source=SOURCE,
            sync_id=sync_id,
            kind=kind,
            at=datetime.now(UTC),
            fullsync_end_offsets=tuple(
                PartitionOffset(p, o) for p, o in sorted(self.fullsync_ends.items())
            )
            if kind is ControlKind.COMPLETED
            else (),
            changes_start_offsets=tuple(
                PartitionOffset(p, o) for p, o in sorted(changes_ends.items())
            )
            if kind is ControlKind.STARTED
            else (),
        )
        self._producer.produce(
            self.topic("barrier"), key=SOURCE.encode(), value=CONTRACTS.sync_control.encode(control)
        )
        self.flush()

    def newest(self) -> dict[str, int]:
        """Each record's newest acknowledged version: what the pipeline must end with."""
        newest: dict[str, int] = {}
        for record, version, _event, _topic in self.acked:
            newest[record] = max(version, newest.get(record, version))
        return newest


@dataclass
class Outcome:
    acked: int
    records: int
    stored: int
    lost: list[str]
    duplicated: list[str]
    regressions: list[str]
    recover_s: float

    def line(self, case: str) -> str:
        return (
            f"[fault] {case}: acked={self.acked} records={self.records} stored={self.stored} "
            f"lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"regressions={len(self.regressions)} recovered_in={self.recover_s:.1f}s"
        )

    def assert_exact(self, case: str) -> None:
        print(self.line(case))
        REPORTED.append(self.line(case))
        assert not self.lost, f"{case}: lost {self.lost[:10]}"
        assert not self.duplicated, f"{case}: applied twice {self.duplicated[:10]}"
        assert not self.regressions, f"{case}: versions went back {self.regressions[:10]}"
        assert self.stored == self.records


@dataclass(frozen=True)
class Emitted:
    record: str
    version: int
    event_id: str


def emitted_updates(bootstrap: str, prefix: str) -> list[Emitted]:
    found = []
    for message in read_committed(bootstrap, f"{prefix}profile-updates"):
        update = CONTRACTS.profile_update.decode(message.value() or b"")
        name = update.attributes.get("first_name")
        if update.source == SOURCE and name is not None:
            found.append(Emitted(update.record_id, version_of(name), update.event_id))
    return found


def emitted_versions(load: Load) -> dict[str, list[int]]:
    """Each record's versions in the order the mapper emitted them."""
    versions: dict[str, list[int]] = defaultdict(list)
    for item in emitted_updates(load.bootstrap, load.prefix):
        versions[item.record].append(item.version)
    return dict(versions)


def judge(
    load: Load, finals: dict[str, int], emitted: Iterable[Emitted], recover_s: float
) -> Outcome:
    newest = load.newest()
    seen: dict[str, int] = defaultdict(int)
    versions: dict[str, list[int]] = defaultdict(list)
    for item in emitted:
        seen[item.event_id] += 1
        versions[item.record].append(item.version)
    regressions = [r for r, vs in versions.items() if any(b <= a for a, b in pairwise(vs))]
    # A change Kafka never acknowledged may still have landed (a timed-out send): a
    # final value newer than the newest acknowledged one is no loss.
    lost = sorted(r for r, v in newest.items() if finals.get(r, -1) < v)
    return Outcome(
        acked=len(load.acked),
        records=len(newest),
        stored=len(newest) - len(lost),
        lost=lost,
        duplicated=sorted(e for e, n in seen.items() if n > 1),
        regressions=sorted(regressions),
        recover_s=recover_s,
    )


def check_updates(load: Load, *, since: float, timeout_s: float = 120) -> Outcome:
    """Wait until the mapper's committed output holds every acked change's newest
    version (or the timeout), then judge it."""
    newest = load.newest()
    emitted: list[Emitted] = []
    finals: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        emitted = emitted_updates(load.bootstrap, load.prefix)
        finals = {}
        for item in emitted:
            finals[item.record] = item.version
        if all(finals.get(r, -1) >= v for r, v in newest.items()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    return judge(load, finals, emitted, time.monotonic() - since)


def stored_versions(db: Path) -> dict[str, int]:
    rows = query(
        db,
        "SELECT i.value, a.value FROM attributes a JOIN identities i "
        "ON i.profile_id = a.profile_id WHERE i.kind = 'crm' AND a.name = 'first_name'",
    )
    return {str(ident).split(":", 1)[1]: version_of(_text(value)) for ident, value in rows}


def _text(value: object) -> str:
    # The store keeps attribute values as JSON text.
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.strip('"')


def check_store(
    load: Load, db: Path, *, since: float, timeout_s: float = 120, audit: bool = True
) -> Outcome:
    """Wait until the store holds every acked change's newest version (or the
    timeout), then judge it against the mapper's output (order, duplicates) and the
    store (final values)."""
    newest = load.newest()
    finals: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        finals = stored_versions(db)
        if all(finals.get(r, -1) >= v for r, v in newest.items()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    recover_s = time.monotonic() - since
    return judge(load, finals, emitted_updates(load.bootstrap, load.prefix), recover_s)


def relayed_changes(bootstrap: str, prefix: str) -> tuple[list[Emitted], int]:
    """The first_name versions the writer's ProfileChanged events carry, per record, in
    the order of their profile's partition, each event id once; and how many events
    came again (a relay interrupted after Kafka had them sends them again)."""
    seen: set[str] = set()
    repeats = 0
    found: list[Emitted] = []
    for message in read_committed(bootstrap, f"{prefix}profile-changes"):
        event = CONTRACTS.profile_changed.decode(message.value() or b"")
        if event.event_id in seen:
            repeats += 1
            continue
        seen.add(event.event_id)
        records = [
            identity.value.split(":", 1)[1]
            for identity in event.identities
            if identity.kind == "crm" and identity.value.startswith(f"{SOURCE}:")
        ]
        for change in event.attributes:
            if change.name == "first_name" and isinstance(change.new_value, str):
                found.extend(
                    Emitted(record, version_of(change.new_value), event.event_id)
                    for record in records
                )
    return found, repeats


def check_relayed(
    load: Load, db: Path, *, since: float, timeout_s: float = 120
) -> tuple[Outcome, int]:
    """Wait until the profile-changes topic says every record's stored value and the
    store's outbox is empty (or the timeout), then judge the topic: lost (a stored
    change no event told), regressions (an older value told after a newer); and the
    events that came again."""
    deadline = time.monotonic() + timeout_s
    while True:
        stored = stored_versions(db)
        emitted, repeats = relayed_changes(load.bootstrap, load.prefix)
        told = {item.record: item.version for item in emitted}
        pending = query(db, "SELECT count(*) FROM profile_outbox")
        done = told == stored and pending == [(0,)]
        if done or time.monotonic() > deadline:
            break
        time.sleep(1)
    outcome = judge(load, told, emitted, time.monotonic() - since)
    missing = sorted(r for r, v in stored.items() if told.get(r) != v)
    outcome.lost = sorted(set(outcome.lost) | set(missing))
    outcome.stored = outcome.records - len(outcome.lost)
    return outcome, repeats


def audited_twice(bootstrap: str, prefix: str) -> list[str]:
    """Event ids the mapper audited more than once (each change is audited once)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for message in read_committed(bootstrap, f"{prefix}audit"):
        event = CONTRACTS.audit_event.decode(message.value() or b"")
        counts[(event.stage, event.event_id)] += 1
    return sorted(e for (stage, e), n in counts.items() if n > 1 and stage == "mapper")


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """Seconds until ``condition`` held; fails the test after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what}: not within {timeout_s}s"
        time.sleep(0.2)
    return time.monotonic() - started
