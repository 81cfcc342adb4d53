"""A backfill of 100,000 profiles to the product documents' CDP (its records API, faked),
killed halfway twice: ``crmsync destination push`` with kill -9 after a committed batch,
and the outbound service with kill -9 after a delivery it had not committed. Run again,
the push goes on where its last batch committed; in the end the CDP holds every
profile once with its values, and the profiles-changes topic every snapshot once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from services.core.codecs import load_contracts
from services.core.mapping_settings import ProfileSettings
from services.core.profile_changed import ProfileChangeKind
from services.writer.stores.sqlite import SqliteProfileStore
from tests.fakes import experiture
from tests.fakes.experiture import Workspace
from tests.fakes.server import ServerThread
from tests.faults.model import REPORTED
from tests.faults.running import restart, wait_killed
from tests.stores.changes import apply, update
from tests.support.broker_fixtures import read_committed
from tests.support.services import REPO_ROOT, SECRETS_ENV, Stack

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PROFILES = 100_000
SEED_BATCH = 5_000
PUSH_BATCH = 1_000
CONTRACTS = load_contracts()


def seed(stack: Stack) -> None:
    """The profiles, written straight into the store, their own changes long relayed."""
    store = SqliteProfileStore(stack.db_path, profile=ProfileSettings())
    try:
        store.migrate()
        for start in range(0, PROFILES, SEED_BATCH):
            apply(
                store,
                [
                    update("crm", str(i), t=1, email=f"p{i}@x.io", attributes={"name": f"P{i}"})
                    for i in range(start, start + SEED_BATCH)
                ],
            )
        pending = store.pending_changes(10**9)
        store.changes_relayed(pending[-1].seq)
    finally:
        store.close()


def push(stack: Stack, *, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    """``crmsync destination push cdp``, its output unbuffered as on a terminal (a
    process killed with -9 flushes nothing)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_CRASH")},
        **SECRETS_ENV,
        "CRMSYNC_CONFIG": str(stack.config_path),
        "PYTHONUNBUFFERED": "1",
    }
    if crash_at is not None:
        env["CRMSYNC_CRASH_AT"] = crash_at
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "destination",
            "push",
            "cdp",
            "--batch",
            str(PUSH_BATCH),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.timeout(900)
def test_a_backfill_of_100000_profiles_killed_halfway_completes_once(stack: Stack) -> None:
    space = Workspace(fields={"email", "first_name"}, identity_keys={"email"})
    with ServerThread(experiture.server(space)) as server:
        stack.config["destinations"] = {
            "cdp": {
                "kind": "cdp",
                "api": {
                    "base_url": f"{server.url}/public/v1",
                    "token": {"env": "CRMSYNC_TEST_CDP_TOKEN"},
                    "max_requests_per_second": 100,
                },
                "match_key": "email",
                "attributes": {"name": "first_name"},
            }
        }
        stack.write_config()
        started = time.monotonic()
        seed(stack)
        seeded_in = time.monotonic() - started
        outbound = stack["outbound"]
        outbound.env["CRMSYNC_TEST_CDP_TOKEN"] = experiture.TOKEN
        outbound.env["CRMSYNC_CRASH_AT"] = "outbound-after-delivery:100"
        stack.start("writer", "outbound")

        # The push killed after its 50th committed batch: half the profiles queued.
        killed = push(stack, crash_at=f"push-after-batch:{PROFILES // PUSH_BATCH // 2}")
        assert killed.returncode == -9, killed.stdout + killed.stderr
        assert f"of {PROFILES} profiles started" in killed.stdout
        resumed = push(stack)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "resuming push" in resumed.stdout
        assert f"after profile {PROFILES // 2}" in resumed.stdout
        assert f"{PROFILES} of {PROFILES} profiles queued" in resumed.stdout

        # The outbound service killed after a delivery it had not committed.
        wait_killed(outbound, timeout_s=300)
        restart(outbound)
        deadline = time.monotonic() + 600
        while len(space.rows) < PROFILES or not all(row.get("first_name") for row in space.rows):
            assert time.monotonic() < deadline, (len(space.rows), outbound.log_tail())
            time.sleep(1)
        done_in = time.monotonic() - started

    by_email = {row["email"]: row["first_name"] for row in space.rows}
    assert len(space.rows) == PROFILES
    assert by_email == {f"p{i}@x.io": f"P{i}" for i in range(PROFILES)}
    snapshots = Counter(
        event.profile_id
        for message in read_committed(stack.bootstrap, stack.topic("profile-changes"))
        if (event := CONTRACTS.profile_changed.decode(message.value() or b"")).kind
        is ProfileChangeKind.SNAPSHOT
    )
    assert len(snapshots) == PROFILES and set(snapshots.values()) == {1}
    line = (
        f"[fault] push of {PROFILES} profiles, push and outbound each killed halfway: "
        f"seeded in {seeded_in:.0f}s, delivered in {done_in - seeded_in:.0f}s, "
        f"records upserted {space.upserts} (again after the outbound kill: "
        f"{space.upserts - PROFILES}), idempotent replays {space.replayed}"
    )
    print(line)
    REPORTED.append(line)
