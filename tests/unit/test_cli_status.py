"""``crmsync status``: one gathered ``Status``, rendered for people (as it always read)
and as JSON with the same facts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.cli.exit_codes import DONE
from services.cli.status_command import (
    DestinationStatus,
    SourceStatus,
    Status,
    human_lines,
    status_json,
)
from services.core.mapping_settings import ProfileSettings
from services.core.sources.common import PollSettings
from services.ingest.admin import fullsync_json, pause_json, poll_json
from services.ingest.pauses import Pause
from services.ingest.state import FullSyncState, PollState, SyncStatus
from services.writer.stores.snapshots import PushProgress
from services.writer.stores.sqlite import SqliteProfileStore
from tests.stores.changes import apply, update
from tests.support.cli import config_file, crmsync, ingest_admin

pytestmark = pytest.mark.unit

AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POLL = poll_json(
    PollSettings(interval_seconds=60),
    PollState(
        watermark=AT,
        last_success_at=AT,
        last_error="HTTP 503 from the CRM",
        consecutive_failures=2,
    ),
)
RUNNING = fullsync_json(
    FullSyncState(
        sync_id="crm-1",
        status=SyncStatus.RUNNING,
        origin="FULL_SYNC",
        owner="ingest",
        started_at=AT,
        updated_at=AT,
        records_done=40,
        records_total=100,
    )
)
PAUSED = pause_json(Pause("pause-shop-1", AT))
DONE_PUSH = PushProgress("cdp", "r1", 1000, 1000, 1000, AT, finished_at=AT, mapping_version=2)

GATHERED = Status(
    sources=(
        SourceStatus(
            name="crm",
            kind="hubspot",
            mapping_version=3,
            webhook=True,
            poll=POLL,
            fullsync=RUNNING,
            paused=None,
            profiles_under_older_mapping=0,
        ),
        SourceStatus(
            name="shop",
            kind="generic_webhook",
            mapping_version=2,
            webhook=True,
            poll=None,
            fullsync=None,
            paused=PAUSED,
            profiles_under_older_mapping=7,
        ),
    ),
    destinations=(
        DestinationStatus(
            name="cdp",
            kind="cdp",
            paused=False,
            mapping_version=2,
            changes_waiting=12,
            pushes_known=True,
            last_push=DONE_PUSH,
        ),
        DestinationStatus(
            name="hook",
            kind="webhook",
            paused=True,
            mapping_version=1,
            changes_waiting=None,
            pushes_known=False,
            last_push=None,
        ),
    ),
)


def test_people_read_every_source_and_destination_as_before() -> None:
    assert human_lines(GATHERED) == [
        "crm (hubspot, mapping v3)",
        "  webhook: receiving",
        "  poll: every 60s, failing, last success 2026-12-03T12:00:00+00:00, "
        "watermark 2026-12-03T12:00:00+00:00",
        "    last error: HTTP 503 from the CRM",
        "  full sync: crm-1 RUNNING 40/100",
        "shop (generic_webhook, mapping v2)",
        "  profiles: 7 written under an older mapping than v2; a full sync is due",
        "  paused since 2026-12-03T12:00:00+00:00: changes queue until resumed",
        "  webhook: receiving",
        "cdp (destination, cdp): delivering, 12 changes waiting",
        "  backfill: done, 1000 of 1000 profiles at 2026-12-03 12:00Z",
        "hook (destination, webhook): paused",
    ]


def test_scripts_read_the_same_facts_as_json() -> None:
    shown = status_json(GATHERED)
    assert shown["sources"]["crm"] == {
        "kind": "hubspot",
        "mapping_version": 3,
        "webhook": True,
        "poll": POLL,
        "fullsync": RUNNING,
        "paused": None,
        "profiles_under_older_mapping": 0,
        "fullsync_due": False,
    }
    assert shown["sources"]["shop"]["paused"] == {
        "pause_id": "pause-shop-1",
        "since": AT.isoformat(),
    }
    assert shown["sources"]["shop"]["fullsync_due"] is True
    assert shown["sources"]["shop"]["profiles_under_older_mapping"] == 7
    assert shown["destinations"] == {
        "cdp": {
            "kind": "cdp",
            "state": "delivering",
            "mapping_version": 2,
            "changes_waiting": 12,
            "backfill": {
                "state": "done",
                "run_id": "r1",
                "pushed": 1000,
                "total": 1000,
                "mapping_version": 2,
                "started_at": AT.isoformat(),
                "finished_at": AT.isoformat(),
            },
        },
        # Kafka and the store not read: unknown, not zero.
        "hook": {
            "kind": "webhook",
            "state": "paused",
            "mapping_version": 1,
            "changes_waiting": None,
            "backfill": None,
        },
    }


def test_the_command_joins_ingest_and_the_store_in_both_renderings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path)
    store = SqliteProfileStore(tmp_path / "profiles.db", profile=ProfileSettings())
    store.migrate()
    apply(
        store,
        [
            update("demo", str(i), t=1, email=f"p{i}@x.io", attributes={"first_name": "P"})
            for i in range(3)
        ],
    )
    store.close()
    ingest_view = {
        "kind": "generic_webhook",
        "mapping_version": 2,  # the store's profiles were written under v1
        "webhook": True,
        "poll": None,
        "fullsync": None,
        "paused": None,
    }
    answers = {("GET", "/status"): [(200, {"sources": {"demo": ingest_view}})]}
    with ingest_admin(answers) as ingest:
        monkeypatch.setenv("CRMSYNC_INGEST_URL", ingest.url)
        human = crmsync(capsys, "--config", str(config), "status")
        as_json = crmsync(capsys, "--config", str(config), "status", "--json")
    assert human.code == as_json.code == DONE
    assert human.out.splitlines() == [
        "demo (generic_webhook, mapping v2)",
        "  profiles: 3 written under an older mapping than v2; a full sync is due",
        "  webhook: receiving",
    ]
    assert as_json.json() == {
        "sources": {
            "demo": {
                **ingest_view,
                "profiles_under_older_mapping": 3,
                "fullsync_due": True,
            }
        },
        "destinations": {},
    }
