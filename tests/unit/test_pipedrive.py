"""The Pipedrive connector: Webhooks v2 parsing and Basic auth, persons API v2 paging.

Payloads follow the "Guide for Webhooks v2" format (meta / data / previous) and the API
v2 "Get all persons" example; the paging tests run the connector through ``ApiClient``
against the fake Pipedrive served in-process.
"""

from __future__ import annotations

import base64
import json
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from services.core.api_client import ApiClient, ApiError
from services.core.contracts import Operation, Origin
from services.core.sources.pipedrive import PipedriveSource
from services.ingest.connectors.base import (
    AuthError,
    Checkpoint,
    InboundRequest,
    PayloadError,
    PullPage,
    Stamp,
)
from services.ingest.connectors.pipedrive import (
    PipedrivePullConnector,
    PipedriveWebhookConnector,
    connectors,
    person_fields,
    verify_basic,
)
from tests.fakes.pipedrive import (
    API_TOKEN,
    INTERESTS,
    LIFETIME_VALUE,
    NEWSLETTER,
    SEGMENT,
    WEBHOOK_PASSWORD,
    WEBHOOK_USER,
    FakePipedrive,
)
from tests.fakes.server import FakeServer, Faults

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
PASSWORD_ENV = "PIPEDRIVE_TEST_HOOK_PASSWORD"
TOKEN_ENV = "PIPEDRIVE_TEST_API_TOKEN"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, WEBHOOK_PASSWORD)
    monkeypatch.setenv(TOKEN_ENV, API_TOKEN)


def source(**overrides: Any) -> PipedriveSource:
    values: dict[str, Any] = {
        "kind": "pipedrive",
        "webhooks": {"username": WEBHOOK_USER, "password": {"env": PASSWORD_ENV}},
    }
    values.update(overrides)
    return PipedriveSource.model_validate(values)


def webhook_connector(**webhooks: Any) -> PipedriveWebhookConnector:
    settings = {"username": WEBHOOK_USER, "password": {"env": PASSWORD_ENV}, **webhooks}
    built = connectors("pd", source(webhooks=settings)).webhook
    assert isinstance(built, PipedriveWebhookConnector)
    return built


def inbound(body: bytes, headers: dict[str, str]) -> InboundRequest:
    return InboundRequest(
        method="POST", url="https://crmsync.example/webhooks/pd", headers=headers, body=body
    )


def meta(**overrides: Any) -> dict[str, Any]:
    """The meta block of the guide's "Webhook format" example, about a person."""
    values: dict[str, Any] = {
        "action": "change",
        "entity": "person",
        "company_id": "12345",
        "correlation_id": "2b8c0a5e-3e9f-4b8d-9d0e-1f2a3b4c5d6e",
        "entity_id": "42",
        "id": "6f7e8d9c-0b1a-4c3d-8e2f-1a2b3c4d5e6f",
        "is_bulk_edit": False,
        "timestamp": "2026-11-23T08:59:58.123Z",
        "type": "general",
        "user_id": "123",
        "version": "2.0",
        "webhook_id": "77",
        "webhook_owner_id": "123",
        "change_source": "app",
        "attempt": 1,
        "host": "company.pipedrive.com",
        "permitted_user_ids": ["123", "456"],
    }
    values.update(overrides)
    return values


def person(**overrides: Any) -> dict[str, Any]:
    """A person ``data`` block as Webhooks v2 sends it."""
    values: dict[str, Any] = {
        "add_time": "2026-11-20T15:35:54Z",
        "custom_fields": {NEWSLETTER: {"type": "varchar", "value": "yes"}},
        "emails": [
            {"label": "home", "primary": False, "value": "ada.home@example.com"},
            {"label": "work", "primary": True, "value": "ada@example.com"},
        ],
        "first_name": "Ada",
        "id": 42,
        "label": None,
        "label_ids": [5, 7],
        "last_name": "Lovelace",
        "name": "Ada Lovelace",
        "org_id": 1,
        "owner_id": 23865811,
        "phones": [{"label": "mobile", "primary": True, "value": "+4512345678"}],
        "update_time": "2026-11-23T08:59:58Z",
        "visible_to": "3",
    }
    values.update(overrides)
    return values


def event(action: str = "change", **parts: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"meta": meta(action=action), "data": person(), "previous": None}
    if action == "delete":
        body.update(data=None, previous=person())
    body.update(parts)
    return body


def parse(body: Any, **webhooks: Any) -> list[Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return list(webhook_connector(**webhooks).parse(inbound(raw, {}), received_at=NOW))


def basic(user: str = WEBHOOK_USER, password: str = WEBHOOK_PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- settings ------------------------------------------------------------------------


def test_api_base_url_defaults_to_pipedrive_and_the_email_field_is_the_primary_email() -> None:
    settings = source(api={"token": {"env": TOKEN_ENV}})
    assert settings.api is not None
    assert settings.api.base_url == "https://api.pipedrive.com"
    assert settings.email_field == "primary_email"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"webhooks": None}, "needs 'webhooks'"),
        ({"webhooks": {"username": "u", "password": "plain"}}, "where the secret is kept"),
        ({"webhooks": {"username": "a:b", "password": {"env": "X"}}}, "cannot contain ':'"),
        ({"api": {"token": "plain"}}, "where the secret is kept"),
        ({"api": {}}, "personal API token"),
        ({"api": {"base_url": "https://x.pipedrive.com/v1", "token": {"env": "X"}}}, "host only"),
        ({"poll": {"interval_seconds": 60}}, "add 'api'"),
        (
            {"api": {"token": {"env": "X"}}, "poll": {"interval_seconds": 60, "page_size": 501}},
            "at most 500",
        ),
    ],
)
def test_settings_refuse_what_pipedrive_cannot_do(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        source(**overrides)


def test_webhook_only_source_has_no_pull() -> None:
    built = connectors("pd", source())
    assert built.webhook is not None
    assert built.pull is None
    assert built.api is None


# --- HTTP Basic ----------------------------------------------------------------------


def test_basic_auth_rfc7617_test_vector() -> None:
    # RFC 7617 section 2: user "Aladdin", password "open sesame".
    verify_basic(
        {"Authorization": "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="}, expected=b"Aladdin:open sesame"
    )


def test_the_configured_credentials_are_accepted() -> None:
    webhook_connector().authenticate(inbound(b"{}", basic()), now=NOW)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing Authorization header"),
        ({"Authorization": f"Bearer {WEBHOOK_PASSWORD}"}, "expected HTTP Basic credentials"),
        ({"Authorization": "Basic not*base64"}, "malformed Basic credentials"),
        (basic(password="guess"), "invalid Basic credentials"),
        (basic(user="someone"), "invalid Basic credentials"),
        (basic(password=WEBHOOK_PASSWORD + "x"), "invalid Basic credentials"),
    ],
)
def test_unproven_senders_are_refused(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(AuthError) as refused:
        webhook_connector().authenticate(inbound(b"{}", headers), now=NOW)
    assert str(refused.value) == reason
    assert WEBHOOK_PASSWORD not in str(refused.value)


# --- webhook events ------------------------------------------------------------------


def test_change_event_becomes_an_upsert_at_the_persons_update_time() -> None:
    [change] = parse(event("change", previous={"first_name": "Augusta"}))
    assert change.record_id == "42"
    assert change.operation is Operation.UPSERT
    assert change.event_id == "6f7e8d9c-0b1a-4c3d-8e2f-1a2b3c4d5e6f"
    assert change.source_modified_at == datetime(2026, 11, 23, 8, 59, 58, tzinfo=UTC)
    assert change.received_at == NOW
    assert change.origin is Origin.WEBHOOK
    fields = change.fields
    assert fields["primary_email"] == "ada@example.com"
    assert fields["emails"] == ["ada.home@example.com", "ada@example.com"]
    assert fields["primary_phone"] == "+4512345678"
    assert fields["first_name"] == "Ada"
    assert fields["label_ids"] == ["5", "7"]
    assert fields[f"custom_fields.{NEWSLETTER}"] == "yes"


def test_create_event_without_update_time_takes_the_event_time() -> None:
    [change] = parse(event("create", data=person(update_time=None)))
    assert change.operation is Operation.UPSERT
    assert change.source_modified_at == datetime(2026, 11, 23, 8, 59, 58, 123000, tzinfo=UTC)


def test_ten_character_unix_timestamp_is_read_too() -> None:
    [change] = parse(event(meta=meta(timestamp=1764000000), data=person(update_time=None)))
    assert change.source_modified_at == datetime.fromtimestamp(1764000000, UTC)


def test_delete_event_carries_the_last_state_and_is_newer_than_it() -> None:
    last = person(update_time="2026-11-23T09:00:00Z")  # same second as, or after, meta
    [change] = parse(event("delete", previous=last))
    assert change.operation is Operation.DELETE
    assert change.record_id == "42"
    assert change.fields["primary_email"] == "ada@example.com"
    assert change.source_modified_at == datetime(2026, 11, 23, 9, tzinfo=UTC) + timedelta(
        microseconds=1
    )


def test_delete_as_part_of_a_merge_names_the_surviving_person() -> None:
    [change] = parse(event("delete", meta=meta(action="delete", merged_to_id="43")))
    assert change.operation is Operation.DELETE
    assert change.fields["merged_to_id"] == "43"


def test_delete_without_previous_state_is_still_a_deletion() -> None:
    [change] = parse(event("delete", previous=None))
    assert change.operation is Operation.DELETE
    assert change.fields == {}
    assert change.source_modified_at == datetime(2026, 11, 23, 8, 59, 58, 123000, tzinfo=UTC)


def test_a_retried_delivery_has_the_same_event_id() -> None:
    crm = FakePipedrive(clock=lambda: NOW)
    crm.upsert(first_name="Ada", email="ada@example.com")
    first, _ = crm.webhook(crm.events[-1], attempt=1)
    retry, _ = crm.webhook(crm.events[-1], attempt=2)
    assert first != retry
    assert parse(first)[0].event_id == parse(retry)[0].event_id


@pytest.mark.parametrize(
    ("items", "primary", "values"),
    [
        ([{"value": "a@x.co", "primary": False}, {"value": "b@x.co", "primary": True}], "b@x.co",
         ["a@x.co", "b@x.co"]),
        ([{"value": "a@x.co", "primary": False}, {"value": "b@x.co"}], "a@x.co",
         ["a@x.co", "b@x.co"]),
        ([{"value": "", "primary": True}, {"value": "b@x.co"}], "b@x.co", ["b@x.co"]),
        ([], None, []),
        (None, None, []),
    ],
)  # fmt: skip
def test_primary_email_is_a_plain_string(items: Any, primary: Any, values: list[str]) -> None:
    fields = person_fields({"id": 1, "emails": items}, where="data")
    assert fields["primary_email"] == primary
    assert fields["emails"] == values


def test_custom_fields_read_the_same_by_webhook_and_by_api() -> None:
    crm = FakePipedrive(clock=lambda: NOW)
    stored = crm.upsert(
        first_name="Ada",
        email="ada@example.com",
        custom={
            NEWSLETTER: "weekly",
            SEGMENT: 3,
            INTERESTS: [4, 9],
            LIFETIME_VALUE: {"value": 2300, "currency": "EUR"},
        },
    )
    by_api = person_fields(stored, where="data[0]")
    by_webhook = person_fields(crm.webhook_data(stored), where="body.data")
    assert by_api[f"custom_fields.{NEWSLETTER}"] == "weekly"
    assert by_api[f"custom_fields.{SEGMENT}"] == 3
    assert by_api[f"custom_fields.{INTERESTS}"] == ["4", "9"]
    assert by_api[f"custom_fields.{LIFETIME_VALUE}.value"] == 2300
    assert by_api[f"custom_fields.{LIFETIME_VALUE}.currency"] == "EUR"
    shared = by_api.keys() & by_webhook.keys()
    assert {key for key in shared if key.startswith("custom_fields")} == {
        key for key in by_api if key.startswith("custom_fields")
    }
    assert {k: by_api[k] for k in shared} == {k: by_webhook[k] for k in shared} | {
        "visible_to": by_api["visible_to"]  # the API sends 3, webhooks "3"
    }


@pytest.mark.parametrize(
    ("body", "where", "problem"),
    [
        (b"{not json", "body", "not valid JSON"),
        ([event()], "body", "must be a JSON object"),
        ({"data": person()}, "body.meta", "missing or not an object"),
        ({"v": 1, "meta": {"v": 1, "action": "updated", "object": "person"}, "current": {}},
         "body.meta.version", "expected '2.0'"),
        (event(meta=meta(entity=None)), "body.meta.entity", "missing"),
        (event(meta=meta(action="updated")), "body.meta.action", "create, change or delete"),
        (event(meta=meta(id=None)), "body.meta.id", "missing or not an id"),
        (event(meta=meta(entity_id="")), "body.meta.entity_id", "non-empty"),
        (event(meta=meta(timestamp="yesterday")), "body.meta.timestamp", "ISO 8601"),
        (event(data=None), "body.data", "carries the person"),
        (event(data=person(id=43)), "body.data.id", "does not match meta.entity_id"),
        (event(data=person(update_time="soon")), "body.data.update_time", "ISO 8601"),
        (event(data=person(emails="ada@example.com")), "body.data.emails", "expected a list"),
        (event(data=person(emails=["ada@example.com"])), "body.data.emails[0]",
         "expected an object"),
        (event(data=person(phones=[{"value": 45}])), "body.data.phones[0].value",
         "must be a string"),
        (event(data=person(custom_fields={"h": {"type": "set", "values": [{"x": 1}]}})),
         "body.data.custom_fields.h", "lists of objects"),
        (event("delete", previous=["x"]), "body.previous", "last state or null"),
    ],
)  # fmt: skip
def test_malformed_events_name_the_field(body: Any, where: str, problem: str) -> None:
    with pytest.raises(PayloadError) as refused:
        parse(body)
    assert refused.value.where == where
    assert problem in refused.value.problem


def test_guide_example_about_a_deal_is_ignored_by_default() -> None:
    deal = {"meta": meta(action="create", entity="deal"), "data": {"id": 1}, "previous": None}
    assert parse(deal) == []


def test_other_entities_can_be_refused() -> None:
    deal = {"meta": meta(entity="organization"), "data": {"id": 1}, "previous": None}
    with pytest.raises(PayloadError) as refused:
        parse(deal, other_entities="reject")
    assert refused.value.where == "body.meta.entity"


def test_fake_webhooks_parse_for_every_action() -> None:
    crm = FakePipedrive(clock=lambda: NOW)
    crm.upsert(7, first_name="Ada", email="ada@example.com")
    crm.upsert(7, last_name="Lovelace")
    crm.delete(7)
    changes = [parse(crm.webhook(e)[0])[0] for e in crm.events]
    assert [c.operation for c in changes] == [Operation.UPSERT] * 2 + [Operation.DELETE]
    assert [c.record_id for c in changes] == ["7", "7", "7"]
    times = [c.source_modified_at for c in changes]
    assert times == sorted(times) and len(set(times)) == 3
    assert changes[1].fields["last_name"] == "Lovelace"
    assert changes[2].fields["primary_email"] == "ada@example.com"


# --- pull ----------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.queries: list[dict[str, str]] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[FakePipedrive, FakeServer, TestServer, Recorder]]:
    ticks = iter(range(10_000_000))
    crm = FakePipedrive(clock=lambda: NOW + timedelta(seconds=next(ticks) // 7))
    recorder = Recorder()

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        recorder.queries.append(dict(request.query))
        response: web.StreamResponse = await handler(request)
        return response

    app = crm.app()
    app.middlewares.append(record)
    fake = FakeServer(app, Faults(throttle_response=crm.throttle_response))
    test_server = TestServer(app)
    await test_server.start_server()
    yield crm, fake, test_server, recorder
    await test_server.close()


def api_client(
    test_server: TestServer, session: httpx.AsyncClient, recorder: Recorder, **settings: Any
) -> tuple[ApiClient, PipedrivePullConnector]:
    values = {
        "api": {
            "base_url": str(test_server.make_url("/")).rstrip("/"),
            "token": {"env": TOKEN_ENV},
            "max_requests_per_second": 1000.0,
            "max_attempts": 5,
        },
        "poll": {"interval_seconds": 60, "page_size": 100},
    }
    values.update(settings)
    built = connectors("pd", source(**values))
    assert built.api is not None and built.credentials is not None
    assert isinstance(built.pull, PipedrivePullConnector)
    client = ApiClient(
        source="pd",
        settings=built.api,
        session=session,
        credentials=built.credentials,
        sleep=recorder.sleep,
    )
    return client, built.pull


async def collect(
    pull: PipedrivePullConnector,
    client: ApiClient,
    *,
    since: datetime | None = None,
    resume: Checkpoint | None = None,
    stop_after: int | None = None,
) -> list[PullPage]:
    pages: list[PullPage] = []
    stream = pull.pages(client, since=since, resume=resume, stamp=Stamp(Origin.FULL_SYNC, "s1"))
    async for page in stream:
        pages.append(page)
        if stop_after is not None and len(pages) == stop_after:
            await stream.aclose()  # type: ignore[attr-defined]
            break
    return pages


@pytest.mark.asyncio
async def test_full_sync_pages_oldest_first_with_the_token_in_a_header(
    served: tuple[FakePipedrive, FakeServer, TestServer, Recorder],
) -> None:
    crm, _fake, test_server, recorder = served
    crm.seed(250)
    async with httpx.AsyncClient() as session:
        client, pull = api_client(test_server, session, recorder)
        pages = await collect(pull, client)
    assert [len(p.changes) for p in pages] == [100, 100, 50]
    changes = [c for p in pages for c in p.changes]
    assert {c.record_id for c in changes} == {str(i) for i in crm.persons}
    times = [c.source_modified_at for c in changes]
    assert times == sorted(times)
    assert [p.checkpoint.watermark for p in pages] == [
        max(c.source_modified_at for c in p.changes) for p in pages
    ]
    assert pages[-1].checkpoint.cursor is None and pages[0].checkpoint.cursor is not None
    assert all(c.origin is Origin.FULL_SYNC and c.sync_id == "s1" for c in changes)
    assert changes[0].fields["primary_email"] == "person0@example.com"
    assert recorder.queries[0] == {
        "sort_by": "update_time",
        "sort_direction": "asc",
        "limit": "100",
    }
    assert all("api_token" not in q for q in recorder.queries)


@pytest.mark.asyncio
async def test_poll_asks_for_persons_updated_since_in_rfc3339(
    served: tuple[FakePipedrive, FakeServer, TestServer, Recorder],
) -> None:
    crm, _fake, test_server, recorder = served
    crm.seed(30)
    cutoff = datetime.fromisoformat(crm.persons[15]["update_time"].replace("Z", "+00:00"))
    async with httpx.AsyncClient() as session:
        client, pull = api_client(test_server, session, recorder)
        pages = await collect(pull, client, since=cutoff + timedelta(microseconds=500))
    ids = {c.record_id for p in pages for c in p.changes}
    assert recorder.queries[0]["updated_since"] == cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ids == {
        str(i) for i, p in crm.persons.items() if p["update_time"] >= crm.persons[15]["update_time"]
    }


@pytest.mark.asyncio
async def test_a_resumed_pull_continues_the_same_query(
    served: tuple[FakePipedrive, FakeServer, TestServer, Recorder],
) -> None:
    crm, _fake, test_server, recorder = served
    crm.seed(120)
    async with httpx.AsyncClient() as session:
        client, pull = api_client(test_server, session, recorder, poll={
            "interval_seconds": 60, "page_size": 50,
        })  # fmt: skip
        first = await collect(pull, client, since=NOW - timedelta(days=1), stop_after=1)
        checkpoint = first[0].checkpoint
        rest = await collect(pull, client, since=NOW, resume=checkpoint)
    assert recorder.queries[-1]["updated_since"] == recorder.queries[0]["updated_since"]
    seen = [c.record_id for p in first + rest for c in p.changes]
    assert len(seen) == len(set(seen)) == 120
    assert rest[-1].checkpoint.watermark == max(
        c.source_modified_at for p in first + rest for c in p.changes
    )


@pytest.mark.asyncio
async def test_an_unreadable_resume_position_starts_the_query_over(
    served: tuple[FakePipedrive, FakeServer, TestServer, Recorder],
) -> None:
    crm, _fake, test_server, recorder = served
    crm.seed(10)
    async with httpx.AsyncClient() as session:
        client, pull = api_client(test_server, session, recorder)
        pages = await collect(pull, client, resume=Checkpoint(cursor="[1, 2]"))
    assert sum(len(p.changes) for p in pages) == 10


@pytest.mark.asyncio
async def test_throttled_answers_are_retried_until_every_page_arrives(
    served: tuple[FakePipedrive, FakeServer, TestServer, Recorder],
) -> None:
    crm, fake, test_server, recorder = served
    crm.seed(150)
    fake.faults.scripted = deque([429, 429, 429])
    async with httpx.AsyncClient() as session:
        client, pull = api_client(test_server, session, recorder)
        pages = await collect(pull, client)
    assert sum(len(p.changes) for p in pages) == 150
    assert fake.statuses[429] == 3
    assert len(recorder.sleeps) == 3  # backed off before each retry


@pytest.mark.asyncio
async def test_the_documented_429_answer(
    served: tuple[FakePipedrive, FakeServer, TestServer, Recorder],
) -> None:
    _crm, fake, test_server, _recorder = served
    fake.faults.script(429)
    async with httpx.AsyncClient() as session:
        url = str(test_server.make_url("/api/v2/persons"))
        response = await session.get(url, headers={"x-api-token": API_TOKEN})
        body = response.json()
        assert response.status_code == 429
        assert response.headers["x-ratelimit-remaining"] == "0"
        assert int(response.headers["x-ratelimit-reset"]) >= 1
    assert body["success"] is False
    assert "Rate limit" in body["error"]


@pytest.mark.asyncio
async def test_a_refused_token_is_an_api_error_without_the_token(
    served: tuple[FakePipedrive, FakeServer, TestServer, Recorder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _crm, _fake, test_server, recorder = served
    monkeypatch.setenv(TOKEN_ENV, "revoked-token")
    async with httpx.AsyncClient() as session:
        client, pull = api_client(test_server, session, recorder)
        with pytest.raises(ApiError) as refused:
            await collect(pull, client)
    assert refused.value.status == 401
    assert "revoked-token" not in str(refused.value)


@pytest.mark.asyncio
async def test_a_bad_person_is_rejected_without_failing_its_page(
    served: tuple[FakePipedrive, FakeServer, TestServer, Recorder],
) -> None:
    crm, _fake, test_server, recorder = served
    crm.seed(5)
    crm.persons[3]["emails"] = [{"value": 7, "primary": True}]
    crm.persons[4]["is_deleted"] = True
    async with httpx.AsyncClient() as session:
        client, pull = api_client(test_server, session, recorder)
        [page] = await collect(pull, client)
    assert [c.record_id for c in page.changes] == ["1", "2", "4", "5"]
    [rejected] = page.rejected
    assert "data[2].emails[0].value" in rejected.reason
    assert b'"id":3' in (rejected.value or b"")
    assert next(c for c in page.changes if c.record_id == "4").operation is Operation.DELETE


@pytest.mark.parametrize(
    "document",
    [[], {"success": False, "error": "x"}, {"data": []}, {"success": True, "data": {"id": 1}},
     {"success": True, "data": [], "additional_data": {"next_cursor": 5}}],
)  # fmt: skip
def test_an_answer_that_is_not_a_person_list_is_an_api_error(document: Any) -> None:
    with pytest.raises(ApiError):
        PipedrivePullConnector._page(document)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("query", "headers", "status", "error"),
    [
        ("", {}, 401, "unauthorized access"),
        ("", {"x-api-token": "wrong"}, 401, "unauthorized access"),
        ("?limit=501", {"x-api-token": API_TOKEN}, 400, "limit"),
        ("?updated_since=yesterday", {"x-api-token": API_TOKEN}, 400, "Invalid isoformat"),
        ("?updated_since=2026-01-01T00:00:00", {"x-api-token": API_TOKEN}, 400, "time zone"),
        ("?sort_by=name", {"x-api-token": API_TOKEN}, 400, "sort_by"),
        ("?cursor=abc", {"x-api-token": API_TOKEN}, 400, "invalid cursor"),
    ],
)
async def test_the_fake_checks_parameters_as_documented(
    served: tuple[FakePipedrive, FakeServer, TestServer, Recorder],
    query: str,
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    _crm, _fake, test_server, _recorder = served
    async with httpx.AsyncClient() as session:
        got = await session.get(
            str(test_server.make_url("/api/v2/persons")) + query, headers=headers
        )
    body = got.json()
    assert got.status_code == status
    assert body["success"] is False
    assert error in body["error"]


def test_the_echo_of_crmsyncs_own_api_write_is_dropped() -> None:
    ours = event(meta=meta(change_source="api", user_id="123"))
    by_hand = event(meta=meta(change_source="app", user_id="123"))
    other_integration = event(meta=meta(change_source="api", user_id="456"))
    assert parse(ours, own_user_ids=[123]) == []
    assert len(parse(by_hand, own_user_ids=[123])) == 1
    assert len(parse(other_integration, own_user_ids=[123])) == 1
    assert len(parse(ours)) == 1
