"""The writer service against the real broker and real stores: effectively once.

ProfileUpdates are put straight on the profile-updates topic (the mapper is not
needed to test the sink), and the real writer process applies them to SQLite or to
PostgreSQL, through a kill -9 between store commit and offset commit, a PostgreSQL
restart, PostgreSQL down at start-up and at a rebalance, a replay of the whole topic
and an erasure.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from confluent_kafka import Consumer

from services.core.codecs import load_contracts
from services.core.config import PostgresStoreSettings, SqliteStoreSettings
from services.core.contracts import ProfileUpdate
from services.writer.stores import open_store
from services.writer.stores.base import ProfileStore, StoredProfile
from tests.stores.changes import update
from tests.support.broker_fixtures import ReadAll, end_offsets, read_committed
from tests.support.broker_fixtures import produce_updates as produce
from tests.support.polling import wait_for
from tests.support.postgres import LocalPostgres, fresh_database
from tests.support.services import REPO_ROOT, SECRETS_ENV, ServiceProcess, Stack

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()
PROFILES = 300
READ_TOKEN = "read-token-1"


@pytest.fixture(params=["sqlite", "postgres"])
def writer_stack(request: pytest.FixtureRequest, stack: Stack) -> Stack:
    """A stack whose writer uses the parametrised store (a fresh database)."""
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        name = f"w_{stack.prefix.strip('.')}"
        stack.config["store"] = {"kind": "postgres", "dsn": fresh_database(dsn, name)}
    stack.config["services"]["writer"]["read_token"] = {"env": "CRMSYNC_TEST_READ_TOKEN"}
    stack.config["services"]["writer"]["batch_max_records"] = 200
    stack.write_config()
    stack["writer"].env["CRMSYNC_TEST_READ_TOKEN"] = READ_TOKEN
    return stack


def reader(stack: Stack) -> ProfileStore:
    store = stack.config["store"]
    if store["kind"] == "postgres":
        return open_store(PostgresStoreSettings.model_validate(store), read_only=True)
    return open_store(SqliteStoreSettings.model_validate(store), read_only=True)


def rounds(versions: Sequence[int], profiles: int = PROFILES) -> list[ProfileUpdate]:
    return [
        update(
            "hubspot",
            str(i),
            t=version,
            email=f"person{i}@example.com",
            attributes={"name": f"Person {i} v{version}", "round": version},
        )
        for version in versions
        for i in range(profiles)
    ]


def caught_up(stack: Stack) -> bool:
    """The store's positions (committed with its data) reached the topic's end."""
    topic = stack.topic("profile-updates")
    ends = {p: o for p, o in end_offsets(stack.bootstrap, topic).items() if o}
    store = reader(stack)
    try:
        return store.stored_offsets(topic) == ends
    except Exception:
        return False
    finally:
        store.close()


def profiles(stack: Stack) -> list[StoredProfile]:
    store = reader(stack)
    try:
        return store.all_profiles()
    finally:
        store.close()


def assert_final_round(stack: Stack, version: int, count: int = PROFILES) -> None:
    found = profiles(stack)
    assert len(found) == count, "a profile was lost or created twice"
    for profile in found:
        assert profile.attributes["round"].value == version
        record = next(i.value for i in profile.identities if i.kind == "crm")
        assert profile.attributes["name"].value == f"Person {record.split(':')[1]} v{version}"


def told_rounds(stack: Stack) -> dict[int, list[int]]:
    """Per profile, the 'round' values its ProfileChanged events told, in topic order,
    each event id once."""
    told: dict[int, list[int]] = {}
    seen: set[str] = set()
    for message in read_committed(stack.bootstrap, stack.topic("profile-changes")):
        event = CONTRACTS.profile_changed.decode(message.value() or b"")
        assert message.key() == str(event.profile_id).encode()
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        told.setdefault(event.profile_id, []).extend(
            int(change.new_value)  # type: ignore[arg-type]
            for change in event.attributes
            if change.name == "round"
        )
    return told


def outbox_empty(stack: Stack) -> bool:
    store = reader(stack)
    try:
        return store.pending_changes(1) == []
    except Exception:
        return False
    finally:
        store.close()


def assert_told_in_order(stack: Stack, versions: list[int], count: int = PROFILES) -> None:
    """Every profile's changes left the writer as events, once each, in order."""
    assert wait_for(lambda: outbox_empty(stack), timeout_s=60), stack["writer"].log_tail()
    told = told_rounds(stack)
    assert len(told) == count
    assert all(rounds_of == versions for rounds_of in told.values()), sorted(told.items())[:3]


def test_kill_9_between_store_commit_and_offset_commit_loses_and_duplicates_nothing(
    writer_stack: Stack,
) -> None:
    stack, writer = writer_stack, writer_stack["writer"]
    writer.env["CRMSYNC_CRASH_AT"] = "writer-after-store-commit:2"
    stack.start("writer")
    produce(stack, rounds([1, 2, 3]))
    assert writer.process is not None
    assert writer.process.wait(timeout=60) == -9, "the crash point was not reached"
    del writer.env["CRMSYNC_CRASH_AT"]
    stack.start("writer")
    assert wait_for(lambda: caught_up(stack), timeout_s=120), writer.log_tail()
    assert_final_round(stack, 3)
    assert_told_in_order(stack, [1, 2, 3])


def test_replaying_the_whole_topic_changes_nothing(writer_stack: Stack) -> None:
    stack = writer_stack
    stack.start("writer")
    changes = rounds([1, 2])
    produce(stack, changes)
    assert wait_for(lambda: caught_up(stack), timeout_s=120)
    before = profiles(stack)
    produce(stack, changes)
    produce(stack, changes[::-1])
    assert wait_for(lambda: caught_up(stack), timeout_s=120)
    assert profiles(stack) == before


def read_api(stack: Stack, query: str, token: str = READ_TOKEN) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{stack['writer'].url}/profiles?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_erasure_then_a_late_event_does_not_bring_the_profile_back(writer_stack: Stack) -> None:
    stack = writer_stack
    stack.start("writer")
    produce(stack, rounds([1], profiles=3))
    assert wait_for(lambda: caught_up(stack), timeout_s=60)
    status, body = read_api(stack, "email=Person1@Example.com")
    assert status == 200 and body["attributes"]["round"]["value"] == 1
    assert body["attributes"]["round"]["source"] == "hubspot"
    assert read_api(stack, "email=person1@example.com", token="wrong")[0] == 401
    assert read_api(stack, "id=nonsense")[0] == 400

    erased = subprocess.run(
        [
            *(sys.executable, "-m", "services.cli", "--config", str(stack.config_path)),
            *("profile", "erase", "--email", "person1@example.com"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **SECRETS_ENV},
        check=False,
    )
    assert erased.returncode == 0, erased.stderr
    assert wait_for(lambda: read_api(stack, "email=person1@example.com")[0] == 404, timeout_s=60)
    assert read_api(stack, "id=hubspot:1")[0] == 404
    # Late: modified before the erasure, delivered after it.
    produce(stack, rounds([2], profiles=3))
    assert wait_for(lambda: caught_up(stack), timeout_s=60)
    assert read_api(stack, "email=person1@example.com")[0] == 404
    assert read_api(stack, "email=person2@example.com")[1]["attributes"]["round"]["value"] == 2
    assert len(profiles(stack)) == 2


@pytest.fixture
def restartable_postgres(stack: Stack) -> Iterator[LocalPostgres]:
    server = LocalPostgres(name="writer-restart", port=19470)
    dsn = server.start()
    stack.config["store"] = {"kind": "postgres", "dsn": fresh_database(dsn, "restart_story")}
    stack.config["services"]["writer"]["batch_max_records"] = 100
    stack.write_config()
    try:
        yield server
    finally:
        server.stop(purge=True)


def store_unavailable(stack: Stack) -> bool:
    with urllib.request.urlopen(f"{stack['writer'].url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return any(line.startswith("crmsync_store_unavailable 1") for line in text.splitlines())


def test_postgres_restarted_mid_run_pauses_and_resumes_with_nothing_skipped(
    stack: Stack, restartable_postgres: LocalPostgres
) -> None:
    stack.start("writer")
    produce(stack, rounds([1, 2]))
    assert wait_for(lambda: caught_up(stack), timeout_s=120)
    restartable_postgres.stop()
    produce(stack, rounds([3, 4]))
    assert wait_for(lambda: store_unavailable(stack), timeout_s=60), stack["writer"].log_tail()
    time.sleep(2)  # the writer keeps polling, paused, while the store is away
    assert stack["writer"].process is not None and stack["writer"].process.poll() is None
    restartable_postgres.start()
    assert wait_for(lambda: caught_up(stack), timeout_s=120), stack["writer"].log_tail()
    assert not store_unavailable(stack)
    assert_final_round(stack, 4)
    assert_told_in_order(stack, [1, 2, 3, 4])


def alive(writer: ServiceProcess) -> bool:
    return writer.process is not None and writer.process.poll() is None


def reports_store_unavailable_or_exited(stack: Stack) -> bool:
    """True once the writer's gauge says its store is away, or once the writer exited."""
    if not alive(stack["writer"]):
        return True
    try:
        return store_unavailable(stack)
    except OSError:  # not listening yet
        return False


def test_writer_started_while_postgres_is_down_waits_and_then_applies_everything(
    stack: Stack, restartable_postgres: LocalPostgres
) -> None:
    writer = stack["writer"]
    restartable_postgres.stop()
    writer.start()  # not stack.start(), which waits for readiness: that needs the store
    assert wait_for(lambda: reports_store_unavailable_or_exited(stack), timeout_s=90)
    assert alive(writer), f"the writer died:\n{writer.log_tail()}"
    produce(stack, rounds([1, 2]))  # the writer created the topics before its store
    time.sleep(2)  # the writer keeps waiting for its store
    assert alive(writer), f"the writer died:\n{writer.log_tail()}"
    assert store_unavailable(stack)
    restartable_postgres.start()
    assert wait_for(lambda: caught_up(stack), timeout_s=120), writer.log_tail()
    assert not store_unavailable(stack)
    assert_final_round(stack, 2)


@contextlib.contextmanager
def another_member_of_the_writers_group(stack: Stack) -> Iterator[None]:
    """A consumer that joins the writer's group (a rebalance) and leaves it (another).

    It commits nothing, so the positions the writer resumes from stay its own.
    """
    assigned = threading.Event()
    member = Consumer(
        {
            "bootstrap.servers": stack.bootstrap,
            "group.id": f"{stack.prefix}writer",
            "enable.auto.commit": False,
            "partition.assignment.strategy": "range",
        }
    )
    member.subscribe(
        [stack.topic("profile-updates")], on_assign=lambda _consumer, _parts: assigned.set()
    )
    try:
        deadline = time.monotonic() + 60
        while not assigned.is_set() and time.monotonic() < deadline:
            member.poll(0.2)  # the rebalance callback runs in here
        assert assigned.is_set(), "the other member was never given partitions"
        yield
    finally:
        member.close()


def test_a_rebalance_while_postgres_is_down_waits_for_the_start_positions(
    stack: Stack, restartable_postgres: LocalPostgres
) -> None:
    writer = stack["writer"]
    stack.start("writer")
    produce(stack, rounds([1, 2]))
    assert wait_for(lambda: caught_up(stack), timeout_s=120), writer.log_tail()
    restartable_postgres.stop()
    with another_member_of_the_writers_group(stack):
        # The writer is idle: only the assignment asks the store anything.
        assert wait_for(lambda: reports_store_unavailable_or_exited(stack), timeout_s=60)
        assert alive(writer), f"the writer died:\n{writer.log_tail()}"
    # The member left: the writer is given every partition again, the store still away.
    produce(stack, rounds([3, 4]))
    time.sleep(2)
    assert alive(writer), f"the writer died:\n{writer.log_tail()}"
    assert store_unavailable(stack)
    restartable_postgres.start()
    assert wait_for(lambda: caught_up(stack), timeout_s=120), writer.log_tail()
    assert not store_unavailable(stack)
    assert_final_round(stack, 4)


def test_a_merge_is_audited_once_and_a_refused_consent_is_audited(
    writer_stack: Stack, read_topic: ReadAll
) -> None:
    stack = writer_stack
    stack.config["profile"] = {
        "subscriptions": {"newsletter": {"channel": "email", "source": "demo"}}
    }
    stack.write_config()
    stack.start("writer")
    two_profiles = [
        update("hubspot", "1", t=1, email="ada@example.com", attributes={"a": 1}),
        update("sfdc", "A1", t=2, attributes={"b": 2}),
    ]
    joining = update(
        "sfdc",
        "A1",
        t=3,
        email="ada@example.com",
        consents=[("newsletter", "email", "opt_in", 3)],
    )
    produce(stack, two_profiles)
    assert wait_for(lambda: caught_up(stack), timeout_s=60)
    produce(stack, [joining, joining])
    assert wait_for(lambda: caught_up(stack), timeout_s=60)
    [profile] = profiles(stack)
    assert {i.value for i in profile.identities} == {"ada@example.com", "hubspot:1", "sfdc:A1"}
    assert profile.consents == ()
    events = [
        CONTRACTS.audit_event.decode(m.value() or b"")
        for m in read_topic(stack.topic("audit"), count=4, timeout_s=10)
    ]
    merges = [e.merge for e in events if e.merge is not None]
    assert len(merges) == 1 and merges[0].into_profile_id == profile.profile_id
    # The refusal is decided again for the redelivered change: the same event, so
    # readers of the audit topic deduplicate it by event id.
    refusals = [(e.event_id, d) for e in events for d in e.dropped if d.field == "newsletter/email"]
    assert {event_id for event_id, _drop in refusals} == {joining.event_id}
    assert "consent source is demo" in refusals[0][1].reason
    assert all(e.stage == "writer" for e in events)


def test_an_outbox_row_that_is_no_event_is_rejected_and_the_rest_relayed(
    stack: Stack, read_topic: ReadAll
) -> None:
    """Nothing crmsync writes, but a store can be edited by hand: one bad row goes to
    rejected with the reason and never holds the events after it back."""
    stack.start("writer")
    produce(stack, rounds([1], profiles=3))
    assert wait_for(lambda: caught_up(stack), timeout_s=60)
    assert wait_for(lambda: outbox_empty(stack), timeout_s=30)
    with sqlite3.connect(stack.db_path, timeout=10) as db:
        db.execute("INSERT INTO profile_outbox (messages) VALUES (?)", (b"\xc1 no messages",))
    produce(stack, rounds([2], profiles=3))
    assert wait_for(lambda: caught_up(stack), timeout_s=60)
    assert wait_for(lambda: outbox_empty(stack), timeout_s=30), stack["writer"].log_tail()
    assert sorted(told_rounds(stack).values()) == [[1, 2]] * 3
    [rejected] = [
        CONTRACTS.rejected_event.decode(m.value() or b"")
        for m in read_topic(stack.topic("rejected"), count=1, timeout_s=10)
    ]
    assert rejected.stage == "outbox"
    assert "not a list of messages" in rejected.reason
    assert rejected.value == b"\xc1 no messages"
