"""Test sync (dry run) of a source: per record what the mapper decides, what would change
in the store and what each destination would get, pulled from a fake CRM over HTTP and
judged against a real SQLite store, with nothing written anywhere."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from services.cli.test_sync_command import rendered, run_source_test
from services.console.test_sync import UnknownSource, run_test_sync
from services.console.test_sync_report import (
    DestinationVerdict,
    RecordReport,
    RecordsFrom,
    RecordVerdict,
    SyncTestReport,
    ValueVerdict,
    report_json,
)
from services.core.config import Settings, parse_settings
from services.core.contracts import ContactChange, Operation, Origin
from services.core.mapping_settings import ProfileSettings
from services.writer.stores.sqlite import SqliteProfileStore
from tests.fakes.generic_rest import TOKEN, FakeRestCrm
from tests.fakes.server import FakeServer, ServerThread
from tests.stores.changes import apply, update

pytestmark = pytest.mark.unit

# The CRM's records are newer than anything seeded into the store (at 2026-11-01).
CRM_NOW = datetime(2027, 1, 1, tzinfo=UTC)
TOKEN_ENV = "TEST_SYNC_REST_TOKEN"
PROFILE = ProfileSettings.model_validate(
    {
        "attributes": {
            "last_name": {"policy": "source_priority", "priority": ["hooks", "rest"]},
        },
        "subscriptions": {"newsletter": {"channel": "email", "source": "rest"}},
    }
)


@dataclass
class Crm:
    """The fake CRM, served over HTTP, and every request it got (method, path)."""

    crm: FakeRestCrm
    server: FakeServer
    requests: list[tuple[str, str]] = field(default_factory=list)


def crm_app(crm: FakeRestCrm, requests: list[tuple[str, str]]) -> web.Application:
    app = crm.app()

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        requests.append((request.method, request.path))
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(record)
    return app


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Crm]:
    crm = FakeRestCrm(clock=lambda: CRM_NOW)
    requests: list[tuple[str, str]] = []
    server = FakeServer(crm_app(crm, requests))
    await server.start()
    yield Crm(crm, server, requests)
    await server.close()


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def settings(
    tmp_path: Path, url: str, *, on_invalid: str = "reject", page_size: int = 100
) -> Settings:
    text = f"""
kafka:
  bootstrap_servers: 127.0.0.1:9
store:
  kind: sqlite
  path: {tmp_path / "profiles.db"}
sources:
  rest:
    kind: generic_rest
    api: {{base_url: "{url}", token: {{env: {TOKEN_ENV}}}, max_attempts: 2}}
    poll: {{interval_seconds: 60, page_size: {page_size}}}
    path: /v1/contacts
    since_param: updated_since
    paging: {{kind: cursor}}
    mapping:
      first_name: first_name
      last_name: last_name
      phone: {{attribute: phone, type: phone, on_invalid: {on_invalid}}}
    consent:
      - {{field: newsletter, subscription: newsletter, channel: email}}
  hooks:
    kind: generic_webhook
    auth: {{kind: none}}
    mapping: {{first_name: first_name, last_name: last_name}}
destinations:
  back:
    kind: cdp
    source: rest
    api: {{base_url: "http://127.0.0.1:9", token: {{env: {TOKEN_ENV}}}}}
    match_key: email
  cdp:
    kind: cdp
    api: {{base_url: "http://127.0.0.1:9", token: {{env: {TOKEN_ENV}}}}}
    match_key: email
    attributes: {{email: Email, first_name: FirstName, phone: Mobile}}
    consents: {{newsletter: NewsletterOptIn}}
  adas:
    kind: cdp
    api: {{base_url: "http://127.0.0.1:9", token: {{env: {TOKEN_ENV}}}}}
    match_key: email
    send_if: {{all: [{{field: first_name, op: eq, value: Ada}}]}}
profile: {json.dumps(PROFILE.model_dump(exclude_defaults=True))}
"""
    return parse_settings(text, file="crmsync.yaml")


def seeded_store(tmp_path: Path) -> Path:
    """A store holding Ada (from rest, older than the CRM) and Bob's last name from
    hooks, which ranks above rest."""
    path = tmp_path / "profiles.db"
    store = SqliteProfileStore(path, profile=PROFILE)
    store.migrate()
    apply(
        store,
        [
            update(
                "rest",
                "c1",
                t=1,
                email="ada@example.com",
                attributes={"first_name": "Old", "phone": "+4532123456"},
            ),
            update("hooks", "h2", t=1, email="bob@example.com", attributes={"last_name": "Hook"}),
        ],
    )
    store.close()
    return path


def by_id(report: SyncTestReport) -> dict[str, RecordReport]:
    return {record.record_id: record for record in report.records}


def store_verdicts(record: RecordReport) -> dict[str, tuple[Any, Any, ValueVerdict]]:
    assert record.store is not None
    return {a.attribute: (a.old, a.new, a.verdict) for a in record.store.attributes}


def destinations(record: RecordReport) -> dict[str, DestinationVerdict]:
    return {d.destination: d.verdict for d in record.destinations}


def fingerprint(path: Path) -> tuple[str, int]:
    """The store file's content hash, and how many bytes its write-ahead log holds
    (a read-only reader may create an empty one, never fill it)."""
    wal = path.with_name(path.name + "-wal")
    return hashlib.sha256(path.read_bytes()).hexdigest(), wal.stat().st_size if wal.exists() else 0


@pytest.mark.asyncio
async def test_a_new_contact_shows_a_new_profile_with_every_field(
    tmp_path: Path, served: Crm
) -> None:
    seeded_store(tmp_path)
    served.crm.upsert(
        "n1", email="Nia@Example.com", first_name="Nia", phone="+45 32 12 34 57", newsletter="yes"
    )
    report = await run_test_sync(settings(tmp_path, served.server.url), "rest", limit=5)
    assert report.records_from is RecordsFrom.API
    record = by_id(report)["n1"]
    assert record.verdict is RecordVerdict.UPDATE
    assert record.identities == ("email:nia@example.com", "crm:rest:n1")
    assert record.store is not None and record.store.profile_id is None
    assert store_verdicts(record) == {
        "first_name": (None, "Nia", ValueVerdict.NEW),
        "phone": (None, "+4532123457", ValueVerdict.NEW),
        "email": (None, "nia@example.com", ValueVerdict.NEW),
    }
    [consent] = record.store.consents
    assert (consent.subscription, consent.old, consent.new, consent.verdict) == (
        "newsletter",
        None,
        "OPT_IN",
        ValueVerdict.NEW,
    )
    cdp = next(d for d in record.destinations if d.destination == "cdp")
    assert cdp.verdict is DestinationVerdict.WOULD_SEND
    assert dict(cdp.fields) == {
        "Email": "nia@example.com",
        "FirstName": "Nia",
        "Mobile": "+4532123457",
    }
    assert dict(cdp.consents) == {"NewsletterOptIn": True}


@pytest.mark.asyncio
async def test_an_existing_profile_shows_old_to_new_and_what_the_store_keeps(
    tmp_path: Path, served: Crm
) -> None:
    seeded_store(tmp_path)
    served.crm.upsert("c1", email="ada@example.com", first_name="Ada", phone="+45 32 12 34 56")
    served.crm.upsert("c2", email="bob@example.com", first_name="Bob", last_name="Rest")
    report = await run_test_sync(settings(tmp_path, served.server.url), "rest", limit=5)
    ada, bob = by_id(report)["c1"], by_id(report)["c2"]
    assert ada.store is not None and ada.store.profile_id is not None
    assert store_verdicts(ada) == {
        "first_name": ("Old", "Ada", ValueVerdict.CHANGED),
        "phone": ("+4532123456", "+4532123456", ValueVerdict.UNCHANGED),
        "email": (None, "ada@example.com", ValueVerdict.NEW),
    }
    # Bob's last name came from hooks, which ranks above rest.
    assert bob.store is not None
    [last_name] = [a for a in bob.store.attributes if a.attribute == "last_name"]
    assert (last_name.old, last_name.new, last_name.verdict) == ("Hook", "Rest", ValueVerdict.KEPT)
    assert last_name.why is not None and "ranks above" in last_name.why
    # Only the changed values go out, under the destination's names.
    [cdp] = [d for d in ada.destinations if d.destination == "cdp"]
    assert dict(cdp.fields) == {"FirstName": "Ada", "Email": "ada@example.com"}


@pytest.mark.asyncio
async def test_an_invalid_phone_rejects_the_record_with_the_reason(
    tmp_path: Path, served: Crm
) -> None:
    served.crm.upsert("c1", email="ada@example.com", first_name="Ada", phone="+45 12")
    served.crm.upsert("c2", email="bob@example.com", first_name="Bob", phone="+45 32 12 34 56")
    report = await run_test_sync(settings(tmp_path, served.server.url), "rest", limit=5)
    bad, good = by_id(report)["c1"], by_id(report)["c2"]
    assert bad.verdict is RecordVerdict.REJECTED
    assert bad.rejected_by == "mapper"
    assert bad.reason is not None and bad.reason.startswith("phone:")
    assert "not a valid phone number" in bad.reason
    assert bad.store is None and bad.destinations == ()
    assert good.verdict is RecordVerdict.UPDATE


@pytest.mark.asyncio
async def test_drop_field_drops_the_invalid_phone_and_keeps_the_rest(
    tmp_path: Path, served: Crm
) -> None:
    seeded_store(tmp_path)
    served.crm.upsert("c1", email="ada@example.com", first_name="Ada", phone="+45 12")
    report = await run_test_sync(
        settings(tmp_path, served.server.url, on_invalid="drop_field"), "rest", limit=5
    )
    record = by_id(report)["c1"]
    assert record.verdict is RecordVerdict.UPDATE
    [drop] = [d for d in record.drops if d.code == "invalid"]
    assert drop.attribute == "phone" and "not a valid phone number" in drop.reason
    # The stored phone stays as it is, and nothing about it goes out.
    assert "phone" not in store_verdicts(record)
    assert store_verdicts(record)["first_name"] == ("Old", "Ada", ValueVerdict.CHANGED)
    [cdp] = [d for d in record.destinations if d.destination == "cdp"]
    assert dict(cdp.fields) == {"FirstName": "Ada", "Email": "ada@example.com"}


@pytest.mark.asyncio
async def test_the_source_own_destination_gets_nothing_and_send_if_filters(
    tmp_path: Path, served: Crm
) -> None:
    seeded_store(tmp_path)
    served.crm.upsert("c1", email="ada@example.com", first_name="Ada")
    served.crm.upsert("c2", email="bob@example.com", first_name="Bob")
    report = await run_test_sync(settings(tmp_path, served.server.url), "rest", limit=5)
    ada, bob = by_id(report)["c1"], by_id(report)["c2"]
    assert destinations(ada) == {
        "back": DestinationVerdict.NOT_SENT,
        "cdp": DestinationVerdict.WOULD_SEND,
        "adas": DestinationVerdict.WOULD_SEND,
    }
    assert destinations(bob)["back"] is DestinationVerdict.NOT_SENT
    assert destinations(bob)["adas"] is DestinationVerdict.FILTERED_OUT
    [adas] = [d for d in ada.destinations if d.destination == "adas"]
    # No attribute map: every changed attribute under its own name.
    assert dict(adas.fields) == {"first_name": "Ada", "email": "ada@example.com"}


@pytest.mark.asyncio
async def test_the_store_is_untouched_and_the_crm_only_read_the_first_pages(
    tmp_path: Path, served: Crm
) -> None:
    store_path = seeded_store(tmp_path)
    served.crm.seed(10)
    before = fingerprint(store_path)
    report = await run_test_sync(
        settings(tmp_path, served.server.url, page_size=3), "rest", limit=4
    )
    assert [r.record_id for r in report.records] == ["c0", "c1", "c2", "c3"]
    assert fingerprint(store_path) == before
    # Two pages of three reach four records; the third page is never asked for.
    assert served.requests == [("GET", "/v1/contacts")] * 2
    reopened = SqliteProfileStore(store_path, profile=PROFILE, read_only=True)
    try:
        assert len(reopened.all_profiles()) == 2
    finally:
        reopened.close()


@pytest.mark.asyncio
async def test_a_crm_that_fails_is_a_note_not_a_crash(tmp_path: Path, served: Crm) -> None:
    served.crm.seed(2)
    served.server.faults.script(500, 500)
    report = await run_test_sync(settings(tmp_path, served.server.url), "rest", limit=2)
    assert report.records == ()
    [note] = report.notes
    assert "the CRM's API failed" in note and "503" in note


@pytest.mark.asyncio
async def test_a_missing_store_is_a_note_and_the_mapping_is_still_shown(
    tmp_path: Path, served: Crm
) -> None:
    served.crm.upsert("c1", email="ada@example.com", first_name="Ada")
    report = await run_test_sync(settings(tmp_path, served.server.url), "rest", limit=1)
    [record] = report.records
    assert record.verdict is RecordVerdict.UPDATE and record.store is None
    assert any("profile store could not be read" in note for note in report.notes)
    assert not (tmp_path / "profiles.db").exists()


def webhook_change(record_id: str, **fields: Any) -> ContactChange:
    return ContactChange(
        source="hooks",
        record_id=record_id,
        operation=Operation.UPSERT,
        event_id=f"hooks-{record_id}",
        source_modified_at=CRM_NOW,
        received_at=CRM_NOW,
        fields=fields,
        origin=Origin.WEBHOOK,
    )


@pytest.mark.asyncio
async def test_a_webhook_only_source_tests_the_changes_given_or_says_how_to_get_some(
    tmp_path: Path,
) -> None:
    seeded_store(tmp_path)
    config = settings(tmp_path, "http://127.0.0.1:9")
    empty = await run_test_sync(config, "hooks", limit=3)
    assert empty.records_from is RecordsFrom.NONE and empty.records == ()
    assert "send it a webhook" in empty.notes[0]
    given = [
        webhook_change("h2", email="bob@example.com", last_name="Hooked"),
        webhook_change("h3", email="cy@example.com", first_name="Cy"),
    ]
    report = await run_test_sync(config, "hooks", limit=1, records=given)
    assert report.records_from is RecordsFrom.GIVEN
    [record] = report.records
    assert store_verdicts(record)["last_name"] == ("Hook", "Hooked", ValueVerdict.CHANGED)
    with pytest.raises(UnknownSource):
        await run_test_sync(config, "nope", limit=1)


@pytest.mark.asyncio
async def test_the_json_form_renders_as_text(tmp_path: Path, served: Crm) -> None:
    seeded_store(tmp_path)
    served.crm.upsert("c1", email="ada@example.com", first_name="Ada", phone="+45 12")
    served.crm.upsert("c2", email="bob@example.com", first_name="Bob", newsletter="yes")
    report = await run_test_sync(settings(tmp_path, served.server.url), "rest", limit=5)
    document = json.loads(json.dumps(report_json(report)))
    text = rendered(document)
    assert "nothing was written" in text
    assert "== record c1 (UPSERT): rejected by the mapper: phone:" in text
    assert "== record c2 (UPSERT): profile " in text
    assert '  first_name: (blank) -> "Bob"  [new]' in text
    assert "  consent newsletter/email: (blank) -> OPT_IN  [new]" in text
    assert "    back: not sent (" in text
    assert "    adas: filtered out (the profile would not match its send_if)" in text
    assert '    cdp: would send FirstName="Bob", Email="bob@example.com", NewsletterOptIn=True' in (
        text
    )


@pytest.fixture
def threaded_crm() -> Iterator[tuple[FakeRestCrm, FakeServer]]:
    """For the CLI, which runs its own event loop: the fake on a thread of its own."""
    crm = FakeRestCrm(clock=lambda: CRM_NOW)
    with ServerThread(FakeServer(crm.app())) as server:
        yield crm, server


def test_the_cli_prints_the_report_and_exits_by_what_it_found(
    tmp_path: Path,
    threaded_crm: tuple[FakeRestCrm, FakeServer],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crm, server = threaded_crm
    crm.upsert("c1", email="ada@example.com", first_name="Ada")
    config = settings(tmp_path, server.url)
    assert run_source_test(config, "rest", limit=5, as_json=True) == 0
    document = json.loads(capsys.readouterr().out)
    assert [r["record_id"] for r in document["records"]] == ["c1"]
    assert document["records"][0]["store"] is None  # no store file yet: a note says so
    assert run_source_test(config, "rest", limit=5, as_json=False) == 0
    assert "== record c1 (UPSERT): update (the store was not read)" in capsys.readouterr().out
    assert run_source_test(config, "nope", limit=5, as_json=False) == 1
    assert run_source_test(config, "rest", limit=0, as_json=False) == 2
    # A webhook-only source's changes are the console's: not answering is exit 3.
    monkeypatch.setenv("CRMSYNC_CONSOLE_URL", "http://127.0.0.1:9")
    assert run_source_test(config, "hooks", limit=5, as_json=False) == 3
    assert "console answered 0" in capsys.readouterr().err
