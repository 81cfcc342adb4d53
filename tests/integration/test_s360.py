"""The S-360 contact webhook for real: real ingest (and mapper and writer), the real broker.

The fake S-360 runs its queue as S-360 does and POSTs buckets of getContactData
contacts with HTTP Basic credentials to ingest. S-360 is push only, so there is no poll
or full sync to run; and it sends no timestamp, so there is no expiry to refuse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.core.codecs import load_contracts
from services.core.contracts import ContactChange, Operation, Origin
from services.ingest.connectors.s360 import basic_authorization
from tests.fakes.s360 import LOGIN, MAX_SENDS, PASSWORD, FakeS360, http_sender
from tests.support.broker_fixtures import ReadAll
from tests.support.polling import wait_for
from tests.support.services import Stack
from tests.support.store import query
from tests.support.webhooks import post_webhook

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()
PASSWORD_ENV = "CRMSYNC_TEST_S360_PASSWORD"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # ServiceProcess copies os.environ into the services it starts.
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)


def s360_stack(kafka_bootstrap: str, tmp_path: Path) -> Stack:
    source = {
        "kind": "s360",
        "auth": {"login": LOGIN, "password": {"env": PASSWORD_ENV}},
        "mapping": {
            "email": "email",
            "individualContact.firstName": "first_name",
            "addresses(isMain).zipCode": "zip_code",
        },
    }
    return Stack(bootstrap=kafka_bootstrap, workdir=tmp_path / "stack", sources={"s360": source})


def decoded(messages: list[Any]) -> list[ContactChange]:
    return [CONTRACTS.contact_change.decode(m.value() or b"") for m in messages]


def post(stack: Stack, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    status, _, answer = post_webhook(
        stack["ingest"].url, body, source="s360", token=None, headers=headers
    )
    return status, answer


def test_buckets_are_accepted_and_unproven_or_malformed_ones_refused(
    kafka_bootstrap: str, tmp_path: Path, read_topic: ReadAll
) -> None:
    crm = FakeS360(batch_size=5, bucket_size=3)
    numbers = crm.seed(7)
    stack = s360_stack(kafka_bootstrap, tmp_path)
    try:
        stack.start("ingest")
        url = f"{stack['ingest'].url}/webhooks/s360"
        # Step 1: two scheduled runs (5, then 2 contacts) in buckets of at most 3.
        assert crm.drain(http_sender(url)) == 7
        assert (crm.queue, crm.abandoned) == ([], [])
        # Step 2: S-360 resends a bucket (say, our 200 was lost): same state, same ids.
        again = crm.webhook_request(numbers[:3])
        assert post(stack, *again) == (200, {"accepted": 3})
        # Step 3: refusals, none of which reaches the changes topic.
        forged = crm.webhook_request(numbers[:1], password="guessed")
        assert post(stack, *forged) == (401, {"error": "invalid login or password"})
        body, _ = crm.webhook_request(numbers[:1])
        anonymous = {"Content-Type": "application/json"}
        assert post(stack, body, anonymous) == (401, {"error": "missing Authorization header"})
        locked_out = FakeS360(password="old-password")
        locked_out.seed(1)
        assert locked_out.drain(http_sender(url)) == 0
        assert len(locked_out.abandoned) == 1
        assert len(locked_out.sent) == MAX_SENDS
        broken = json.dumps([crm.contact_data(numbers[0]), {"contactId": 1}]).encode()
        authorized = {**anonymous, "Authorization": basic_authorization(LOGIN, PASSWORD)}
        assert post(stack, broken, authorized) == (
            400,
            {
                "error": "body[1].contactNumber: missing or not a non-empty string",
                "field": "body[1].contactNumber",
            },
        )
        changes = decoded(read_topic(stack.topic("changes"), count=10, timeout_s=20))
        assert len(read_topic(stack.topic("changes"), count=11, timeout_s=3)) == 10
        [rejected] = read_topic(stack.topic("rejected"), count=1)
    finally:
        stack.stop()
    kept = CONTRACTS.rejected_event.decode(rejected.value() or b"")
    assert (kept.value, kept.source) == (broken, "s360")
    # Partitions interleave: per contact, its first change and its resend.
    by_number: dict[str, list[ContactChange]] = {}
    for change in changes:
        by_number.setdefault(change.record_id, []).append(change)
    assert sorted(by_number) == numbers
    resent = {n: [c.event_id for c in cs] for n, cs in by_number.items() if len(cs) > 1}
    assert sorted(resent) == numbers[:3]
    assert all(first == again for first, again in resent.values())
    assert {(c.operation, c.origin) for c in changes} == {(Operation.UPSERT, Origin.WEBHOOK)}
    ada = by_number[numbers[0]][0]
    assert ada.fields["email"] == "contact0@example.com"
    assert ada.fields["addresses(isMain).zipCode"] == "1200"


def test_pushed_contacts_reach_the_store(kafka_bootstrap: str, tmp_path: Path) -> None:
    crm = FakeS360(bucket_size=10)
    numbers = crm.seed(3)
    crm.upsert(numbers[0], individualContact={"firstName": "Ada"})
    stack = s360_stack(kafka_bootstrap, tmp_path)

    def stored(number: str, name: str) -> object | None:
        rows = query(
            stack.db_path,
            "SELECT a.value FROM attributes a JOIN identities i ON i.profile_id = a.profile_id "
            "WHERE i.kind = 'crm' AND i.value = ? AND a.name = ?",
            f"s360:{number}",
            name,
        )
        return rows[0][0] if rows else None

    try:
        stack.start()
        assert crm.drain(http_sender(f"{stack['ingest'].url}/webhooks/s360")) == 3
        assert wait_for(lambda: stored(numbers[2], "zip_code"), timeout_s=30)
        assert wait_for(lambda: stored(numbers[0], "first_name"), timeout_s=30)
        values = {name: stored(numbers[0], name) for name in ("email", "first_name", "zip_code")}
    finally:
        stack.stop()
    assert {name: json.loads(str(value)) for name, value in values.items()} == {
        "email": "contact0@example.com",
        "first_name": "Ada",
        "zip_code": "1200",
    }
