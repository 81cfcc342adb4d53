"""The webCRM connector: settings, times, the access token, and paging through /Queries.

The pull tests run the connector through ``ApiClient`` against the fake webCRM served
in-process: token exchange and renewal, the keyset queries of polls and full syncs,
rows changing while a pull runs, webCRM's 429 and a bad row inside a page.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from services.core.api_client import ApiClient, ApiError
from services.core.contracts import Operation, Origin
from services.core.sources.webcrm import WebCrmSource
from services.ingest.connectors.base import Checkpoint, PayloadError, PullPage, Stamp
from services.ingest.connectors.webcrm import (
    AccessToken,
    WebCrmPullConnector,
    connectors,
    query_time,
    webcrm_time,
)
from tests.fakes.server import FakeServer, Faults
from tests.fakes.webcrm import APP_TOKEN, FakeWebCrm, Query, ScriptError

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
TOKEN_ENV = "WEBCRM_TEST_APP_TOKEN"
UTC_ZONE = ZoneInfo("UTC")
COPENHAGEN = ZoneInfo("Europe/Copenhagen")


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, APP_TOKEN)


def source(**overrides: Any) -> WebCrmSource:
    values: dict[str, Any] = {"kind": "webcrm", "api": {"token": {"env": TOKEN_ENV}}}
    values.update(overrides)
    return WebCrmSource.model_validate(values)


# --- settings ------------------------------------------------------------------------


def test_defaults_follow_webcrm() -> None:
    settings = source()
    assert settings.api.base_url == "https://api.webcrm.com"
    assert settings.api.max_requests_per_second * 60 <= 250
    assert settings.email_field == "PersonEmail"
    assert settings.time_zone == "UTC"
    assert "PersonPassword" in settings.excluded_fields


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"api": {"token": APP_TOKEN}}, "where the secret is kept"),
        ({"api": {}}, "application token"),
        ({"api": {"token": {"env": "X"}, "max_requests_per_second": 5}}, "250"),
        ({"api": {"token": {"env": "X"}, "base_url": "https://api.webcrm.com/Persons"}},
         "host only"),
        ({"poll": {"interval_seconds": 60, "page_size": 1001}}, "at most 1000"),
        ({"time_zone": "Mars/Olympus"}, "IANA"),
        ({"excluded_fields": ["PersonUpdatedAt"]}, "needs PersonUpdatedAt"),
    ],
)  # fmt: skip
def test_settings_refuse_what_webcrm_cannot_do(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        source(**overrides)


def test_webcrm_is_pull_only() -> None:
    built = connectors("crm", source())
    assert built.webhook is None
    assert isinstance(built.pull, WebCrmPullConnector)
    assert isinstance(built.credentials, AccessToken)


# --- times ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        ("2019-09-01T12:48:51", UTC_ZONE, datetime(2019, 9, 1, 12, 48, 51, tzinfo=UTC)),
        ("2019-09-01T12:48:51.17", UTC_ZONE, datetime(2019, 9, 1, 12, 48, 51, 170000, UTC)),
        ("2019-09-01T12:48:51.1234567", UTC_ZONE,
         datetime(2019, 9, 1, 12, 48, 51, 123456, UTC)),
        ("2019-09-01T12:48:51.0000000Z", COPENHAGEN, datetime(2019, 9, 1, 12, 48, 51, tzinfo=UTC)),
        ("2019-09-01T12:48:51", COPENHAGEN, datetime(2019, 9, 1, 10, 48, 51, tzinfo=UTC)),
        ("2019-01-01T12:00:00", COPENHAGEN, datetime(2019, 1, 1, 11, tzinfo=UTC)),
        ("0001-01-01T00:00:00", UTC_ZONE, None),
        (None, UTC_ZONE, None),
        ("", UTC_ZONE, None),
    ],
)  # fmt: skip
def test_webcrm_times(text: Any, zone: ZoneInfo, expected: datetime | None) -> None:
    assert webcrm_time(text, zone=zone, where="[0].PersonUpdatedAt") == expected


@pytest.mark.parametrize("text", ["yesterday", "2019-09-01", 1567342131, "2019-13-01T00:00:00"])
def test_unreadable_times_name_the_field(text: Any) -> None:
    with pytest.raises(PayloadError) as refused:
        webcrm_time(text, zone=UTC_ZONE, where="[3].PersonUpdatedAt")
    assert refused.value.where == "[3].PersonUpdatedAt"


def test_query_times_are_local_whole_seconds_rounded_down() -> None:
    moment = datetime(2026, 6, 1, 8, 30, 15, 999999, tzinfo=UTC)
    assert query_time(moment, UTC_ZONE) == "2026-06-01T08:30:15"
    assert query_time(moment, COPENHAGEN) == "2026-06-01T10:30:15"


# --- the fake's query subset ---------------------------------------------------------


def test_fake_runs_the_scripts_webcrm_integrations_write() -> None:
    crm = FakeWebCrm(clock=lambda: NOW)
    crm.seed(3)
    crm.upsert(2, PersonFirstName="Changed")
    tap = Query.parse("SELECT * FROM person order by PersonUpdatedAt ASC", read_time=crm.read)
    assert [r["PersonId"] for r in tap.run(list(crm.persons.values()))] == [1, 3, 2]
    erp = Query.parse(
        "SELECT * FROM Person WHERE PersonUpdatedAt >= '2026-11-23T09:00:00.0000000Z' "
        "AND (PersonFirstName = 'Changed' OR PersonId > 2)",
        read_time=crm.read,
    )
    assert sorted(r["PersonId"] for r in erp.run(list(crm.persons.values()))) == [2, 3]


@pytest.mark.parametrize(
    "script",
    [
        "DELETE FROM Person",
        "SELECT * FROM Organisation",
        "SELECT * FROM Person WHERE PersonId",
        "SELECT * FROM Person WHERE PersonId > 1 ORDER PersonId",
        "SELECT * FROM Person WHERE PersonUpdatedAt > '2026-99-01T00:00:00'",
    ],
)
def test_fake_refuses_scripts_it_cannot_run(script: str) -> None:
    with pytest.raises(ScriptError):
        Query.parse(script, read_time=FakeWebCrm().read)


# --- the API through ApiClient -------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[FakeWebCrm, FakeServer, TestServer]]:
    crm = FakeWebCrm(clock=lambda: NOW)
    app = crm.app()
    fake = FakeServer(app, Faults(throttle_response=crm.throttle_response))
    test_server = TestServer(app)
    await test_server.start_server()
    yield crm, fake, test_server
    await test_server.close()


def api_client(
    test_server: TestServer,
    session: httpx.AsyncClient,
    recorder: Recorder,
    *,
    clock: Clock | None = None,
    page_size: int = 100,
    **settings: Any,
) -> tuple[ApiClient, WebCrmPullConnector, AccessToken]:
    base_url = str(test_server.make_url("/")).rstrip("/")
    values: dict[str, Any] = {
        "api": {"base_url": base_url, "token": {"env": TOKEN_ENV}, "max_attempts": 5},
        "poll": {"interval_seconds": 60, "page_size": page_size},
    }
    values.update(settings)
    built = connectors("crm", source(**values))
    assert built.api is not None and isinstance(built.pull, WebCrmPullConnector)
    credentials = AccessToken(
        base_url=base_url, app_token=APP_TOKEN, timeout_seconds=5, clock=clock or Clock()
    )
    client = ApiClient(
        source="crm",
        settings=built.api.model_copy(update={"max_requests_per_second": 1000.0}),
        session=session,
        credentials=credentials,
        sleep=recorder.sleep,
    )
    return client, built.pull, credentials


async def collect(
    pull: WebCrmPullConnector,
    client: ApiClient,
    *,
    since: datetime | None = None,
    resume: Checkpoint | None = None,
    stop_after: int | None = None,
) -> list[PullPage]:
    pages: list[PullPage] = []
    stream = pull.pages(client, since=since, resume=resume, stamp=Stamp(Origin.POLL))
    async for page in stream:
        pages.append(page)
        if stop_after is not None and len(pages) == stop_after:
            await stream.aclose()  # type: ignore[attr-defined]
            break
    return pages


def ids(pages: list[PullPage]) -> list[str]:
    return [c.record_id for p in pages for c in p.changes]


@pytest.mark.asyncio
async def test_full_sync_reads_every_person_once_by_id(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, fake, test_server = served
    crm.seed(250)
    crm.upsert(3, PersonFirstName="Newest")
    async with httpx.AsyncClient() as session:
        client, pull, _token = api_client(test_server, session, Recorder())
        pages = await collect(pull, client)
    assert [len(p.changes) for p in pages] == [100, 100, 50]
    assert ids(pages) == [str(i) for i in range(1, 251)]
    assert crm.scripts == [
        "SELECT * FROM Person ORDER BY PersonId",
        "SELECT * FROM Person WHERE PersonId > 100 ORDER BY PersonId",
        "SELECT * FROM Person WHERE PersonId > 200 ORDER BY PersonId",
    ]
    # Sorted by id, not by change: the watermark comes with the last page only.
    assert [p.checkpoint.watermark for p in pages[:2]] == [None, None]
    assert pages[-1].checkpoint.watermark == crm.read(crm.persons[3]["PersonUpdatedAt"])
    assert pages[-1].checkpoint.cursor is None
    first = pages[0].changes[0]
    assert first.fields["PersonEmail"] == "person0@example.com"
    assert first.operation is Operation.UPSERT
    assert not any(name.endswith("Password") for name in first.fields)
    assert crm.logins == 1
    assert fake.requests == 4  # one login, three pages


@pytest.mark.asyncio
async def test_poll_pages_by_update_time_and_id_past_a_crowd_of_equal_times(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, _fake, test_server = served
    crm.seed(230)  # all at the same PersonUpdatedAt: more than a page shares one time
    async with httpx.AsyncClient() as session:
        client, pull, _token = api_client(test_server, session, Recorder())
        pages = await collect(pull, client, since=NOW - timedelta(minutes=5))
    assert ids(pages) == [str(i) for i in range(1, 231)]
    at = crm.persons[1]["PersonUpdatedAt"]
    assert crm.scripts[0] == (
        "SELECT * FROM Person WHERE PersonUpdatedAt >= '2026-11-23T08:55:00' "
        "ORDER BY PersonUpdatedAt, PersonId"
    )
    keyset = f"(PersonUpdatedAt > '{at}') OR (PersonUpdatedAt = '{at}' AND PersonId > 100)"
    assert crm.scripts[1].startswith("SELECT * FROM Person WHERE ")
    assert crm.scripts[1].endswith(f"WHERE {keyset} ORDER BY PersonUpdatedAt, PersonId")
    assert [p.checkpoint.watermark for p in pages] == [NOW, NOW, NOW]


@pytest.mark.asyncio
async def test_rows_changing_during_a_poll_are_never_skipped(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, _fake, test_server = served
    crm.seed(300)
    async with httpx.AsyncClient() as session:
        client, pull, _token = api_client(test_server, session, Recorder())
        since = NOW - timedelta(minutes=1)
        first = await collect(pull, client, since=since, stop_after=1)
        # Between pages: read persons change, unread persons change, some are deleted.
        for person_id in (5, 150, 151, 299):
            crm.upsert(person_id, PersonTitle="Dr")
        for person_id in (101, 102):
            crm.delete(person_id)
        rest = await collect(pull, client, since=NOW, resume=first[0].checkpoint)
    seen = ids(first + rest)
    assert set(seen) == {str(i) for i in crm.persons} | {"5"}
    # Changed persons are read again, in their new version, after the others.
    assert seen[-4:] == ["5", "150", "151", "299"]
    assert rest[-1].checkpoint.watermark == crm.read(crm.persons[299]["PersonUpdatedAt"])


@pytest.mark.asyncio
async def test_an_unreadable_resume_position_starts_the_query_over(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, _fake, test_server = served
    crm.seed(20)
    bad = '{"since":"1\' OR 1=1 --","after":null,"after_id":null,"newest":null}'
    async with httpx.AsyncClient() as session:
        client, pull, _token = api_client(test_server, session, Recorder())
        pages = await collect(pull, client, resume=Checkpoint(cursor=bad))
    assert len(ids(pages)) == 20
    assert "OR 1=1" not in crm.scripts[0]


@pytest.mark.asyncio
async def test_time_zone_of_the_account_is_honoured(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, _fake, test_server = served
    crm.zone = COPENHAGEN
    crm.seed(3)
    async with httpx.AsyncClient() as session:
        client, pull, _token = api_client(
            test_server, session, Recorder(), time_zone="Europe/Copenhagen"
        )
        [page] = await collect(pull, client, since=NOW - timedelta(seconds=1))
    assert crm.persons[1]["PersonUpdatedAt"] == "2026-11-23T10:00:00.000"
    assert [c.source_modified_at for c in page.changes] == [NOW] * 3
    assert "PersonUpdatedAt >= '2026-11-23T09:59:59'" in crm.scripts[0]


@pytest.mark.asyncio
async def test_the_access_token_is_reused_then_renewed_before_it_expires(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, _fake, test_server = served
    crm.token_lifetime = 3600
    clock = Clock()
    async with httpx.AsyncClient() as session:
        client, pull, token = api_client(test_server, session, Recorder(), clock=clock)
        await collect(pull, client)
        await collect(pull, client)
        assert crm.logins == 1
        clock.now += 3600 - 59  # inside the last minute of the token's hour
        await collect(pull, client)
        assert crm.logins == 2
        assert (await token.headers())["Authorization"].startswith("Bearer ")


@pytest.mark.asyncio
async def test_a_401_gets_a_new_access_token_and_the_request_again(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, fake, test_server = served
    crm.seed(5)
    async with httpx.AsyncClient() as session:
        client, pull, _token = api_client(test_server, session, Recorder())
        await collect(pull, client)
        crm.expire_tokens()
        pages = await collect(pull, client)
    assert len(ids(pages)) == 5
    assert crm.logins == 2
    assert fake.statuses[401] == 1


@pytest.mark.asyncio
async def test_a_refused_application_token_is_an_api_error_without_the_token(
    served: tuple[FakeWebCrm, FakeServer, TestServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _crm, _fake, test_server = served
    async with httpx.AsyncClient() as session:
        client, pull, _token = api_client(test_server, session, Recorder())
        client._credentials = AccessToken(  # the token the source was configured with
            base_url=client.base_url, app_token="0000-revoked", timeout_seconds=5
        )
        with pytest.raises(ApiError) as refused:
            await collect(pull, client)
    assert refused.value.status == 401
    assert refused.value.path == "/Auth/ApiLogin"
    assert "0000-revoked" not in str(refused.value)


@pytest.mark.asyncio
async def test_throttled_requests_wait_for_retry_after(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, fake, test_server = served
    crm.seed(150)
    crm.retry_after_seconds = 14
    recorder = Recorder()
    async with httpx.AsyncClient() as session:
        client, pull, _token = api_client(test_server, session, recorder)
        await collect(pull, client, stop_after=1)  # logged in
        fake.faults.scripted = deque([429, 429])
        pages = await collect(pull, client)
    assert len(ids(pages)) == 150
    assert recorder.sleeps == [14.0, 14.0]


@pytest.mark.asyncio
async def test_a_throttled_login_is_retried(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, fake, test_server = served
    crm.seed(3)
    fake.faults.scripted = deque([429, 503])
    recorder = Recorder()
    async with httpx.AsyncClient() as session:
        client, pull, _token = api_client(test_server, session, recorder)
        pages = await collect(pull, client)
    assert len(ids(pages)) == 3
    assert crm.logins == 1
    assert len(recorder.sleeps) == 2


@pytest.mark.asyncio
async def test_the_documented_429_answer(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, fake, test_server = served
    crm.retry_after_seconds = 14
    fake.faults.script(429)
    async with httpx.AsyncClient() as session:
        response = await session.get(str(test_server.make_url("/Persons")))
    body = response.json()
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "14"
    assert body == {
        "RetryAfterSeconds": 14,
        "Message": "The request was throttled. The limit of 250 requests per minute is reached",
        "Type": "TooManyRequestsException",
    }


@pytest.mark.asyncio
async def test_a_bad_row_is_rejected_and_the_pull_goes_on(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, _fake, test_server = served
    crm.seed(12)
    crm.persons[4]["PersonUpdatedAt"] = "0001-01-01T00:00:00"
    crm.persons[4]["PersonCreatedAt"] = None
    crm.persons[7]["PersonUpdatedAt"] = None  # never updated: its creation time counts
    async with httpx.AsyncClient() as session:
        client, pull, _token = api_client(test_server, session, Recorder(), page_size=5)
        pages = await collect(pull, client)
    assert ids(pages) == [str(i) for i in range(1, 13) if i != 4]
    [rejected] = [r for p in pages for r in p.rejected]
    assert rejected.reason == "[3].PersonUpdatedAt: neither updated nor created time"
    assert b'"PersonId":4' in (rejected.value or b"")
    assert b"hunter2" not in (rejected.value or b"")  # excluded fields stay out of rejected too


@pytest.mark.asyncio
async def test_an_answer_that_is_not_a_row_list_is_an_api_error(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    _crm, _fake, test_server = served

    async def not_a_list(*_args: Any, **_kwargs: Any) -> Any:
        return {"Message": "?"}

    async with httpx.AsyncClient() as session:
        client, pull, _token = api_client(test_server, session, Recorder())
        client.get_json = not_a_list  # type: ignore[method-assign]
        with pytest.raises(ApiError, match="not a list"):
            await collect(pull, client)


@pytest.mark.asyncio
async def test_the_fake_checks_tokens_and_paging_as_documented(
    served: tuple[FakeWebCrm, FakeServer, TestServer],
) -> None:
    crm, _fake, test_server = served
    crm.seed(3)
    async with httpx.AsyncClient() as session:
        anonymous = await session.get(str(test_server.make_url("/Persons")))
        assert anonymous.status_code == 401
        login = str(test_server.make_url("/Auth/ApiLogin"))
        refused = await session.post(login, data={"authCode": "nope"})
        assert refused.status_code == 401
        assert refused.json()["IsError"] is True
        granted = await session.post(login, data={"authCode": APP_TOKEN})
        tokens = granted.json()
        assert tokens["ExpiresIn"] == 3600
        bearer = {"Authorization": f"Bearer {tokens['AccessToken']}"}
        persons = str(test_server.make_url("/Persons"))
        page = await session.get(persons, params={"Page": "2", "Size": "2"}, headers=bearer)
        assert [p["PersonId"] for p in page.json()] == [3]
        too_big = await session.get(persons, params={"Size": "1001"}, headers=bearer)
        assert too_big.status_code == 400
        refresh = str(test_server.make_url("/Auth/ApiRefresh"))
        renewed = await session.post(refresh, headers={"refreshToken": tokens["RefreshToken"]})
        assert renewed.json()["AccessToken"] != tokens["AccessToken"]
