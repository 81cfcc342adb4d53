"""The generic webhook connector: payload parsing and sender verification."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.core.config import BearerAuth, GenericWebhookSource, HmacSha256Auth, NoAuth, SecretRef
from services.core.contracts import Operation
from services.ingest.connectors.base import AuthError, PayloadError
from services.ingest.connectors.generic import GenericWebhookConnector

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def connector(**settings: Any) -> GenericWebhookConnector:
    values: dict[str, Any] = {"kind": "generic_webhook", "auth": NoAuth(kind="none")}
    values.update(settings)
    return GenericWebhookConnector(source="demo", settings=GenericWebhookSource(**values))


def parse(body: Any, **settings: Any) -> list[Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return list(connector(**settings).parse(headers={}, body=raw, received_at=NOW))


def test_single_object_becomes_one_change() -> None:
    [change] = parse(
        {"id": 7, "updated_at": "2026-11-23T08:00:00Z", "email": "a@b.co", "company": {"n": "X"}}
    )
    assert change.record_id == "7"
    assert change.source_modified_at == datetime(2026, 11, 23, 8, tzinfo=UTC)
    assert change.received_at == NOW
    assert change.fields["company.n"] == "X"
    assert change.operation is Operation.UPSERT


def test_list_keeps_order_and_ids() -> None:
    changes = parse(
        [{"id": "a", "updated_at": 1_700_000_000}, {"id": "b", "updated_at": 1_700_000_000_000}]
    )
    assert [c.record_id for c in changes] == ["a", "b"]
    assert changes[0].source_modified_at == changes[1].source_modified_at


def test_same_body_gives_same_event_ids_so_retries_deduplicate() -> None:
    body = [{"id": "a", "updated_at": "2026-01-01T00:00:00+01:00", "x": 1}]
    assert [c.event_id for c in parse(body)] == [c.event_id for c in parse(body)]
    changed = [{"id": "a", "updated_at": "2026-01-01T00:00:00+01:00", "x": 2}]
    assert parse(body)[0].event_id != parse(changed)[0].event_id


def test_configured_event_id_and_deleted_flag() -> None:
    [change] = parse(
        {"id": 1, "updated_at": 5, "evt": "E-9", "gone": True},
        event_id_field="evt",
        deleted_field="gone",
    )
    assert change.event_id == "E-9"
    assert change.operation is Operation.DELETE


def test_without_modified_field_receipt_time_orders() -> None:
    [change] = parse({"id": 1}, modified_at_field=None)
    assert change.source_modified_at == NOW


def test_multi_select_values_become_strings() -> None:
    [change] = parse({"id": 1, "updated_at": 1, "tags": ["a", 2, True, None]})
    assert change.fields["tags"] == ["a", "2", "true", ""]


@pytest.mark.parametrize(
    ("body", "where", "problem"),
    [
        (b"{not json", "body", "not valid JSON"),
        (b"\xff\xfe", "body", "not UTF-8"),
        (b"NaN", "body", "not valid JSON"),
        ([], "body", "non-empty array"),
        ("text", "body", "non-empty array"),
        ([1], "body[0]", "must be a JSON object"),
        ([{"updated_at": 1}], "body[0].id", "missing or not an id"),
        ({"id": "  ", "updated_at": 1}, "body.id", "non-empty string"),
        ({"id": 1}, "body.updated_at", "expected a timestamp"),
        ({"id": 1, "updated_at": "yesterday"}, "body.updated_at", "not an ISO 8601"),
        ({"id": 1, "updated_at": 1, "big": 2**70}, "body.big", "64-bit range"),
        ({"id": 1, "updated_at": 1, "addr": [{"c": 1}]}, "body.addr", "lists of objects"),
    ],
)
def test_bad_payloads_name_the_field(body: Any, where: str, problem: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse(body)
    assert caught.value.where == where
    assert problem in caught.value.problem


def test_deeply_nested_json_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="nested too deeply"):
        parse(b"[" * 100_000 + b"]" * 100_000)


def hmac_connector(monkeypatch: pytest.MonkeyPatch, **auth: Any) -> GenericWebhookConnector:
    monkeypatch.setenv("CRMSYNC_TEST_HMAC", "k3y-secret")
    return connector(
        auth=HmacSha256Auth(kind="hmac_sha256", secret=SecretRef(env="CRMSYNC_TEST_HMAC"), **auth)
    )


def sign(body: bytes, prefix: bytes = b"") -> str:
    return hmac.new(b"k3y-secret", prefix + body, hashlib.sha256).hexdigest()


def test_hmac_signature_accepted_and_forgeries_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    c = hmac_connector(monkeypatch)
    body = b'{"id": 1}'
    c.authenticate(headers={"X-Signature": sign(body)}, body=body, now=NOW)
    c.authenticate(headers={"X-Signature": "sha256=" + sign(body)}, body=body, now=NOW)
    with pytest.raises(AuthError, match="invalid signature"):
        c.authenticate(headers={"X-Signature": sign(body + b" ")}, body=body, now=NOW)
    with pytest.raises(AuthError, match="missing X-Signature"):
        c.authenticate(headers={}, body=body, now=NOW)


def test_signed_timestamp_bounds_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    c = hmac_connector(monkeypatch, timestamp_header="X-Timestamp", tolerance_seconds=300)
    body = b'{"id": 1}'

    def headers(at: datetime) -> dict[str, str]:
        stamp = str(int(at.timestamp()))
        return {"X-Timestamp": stamp, "X-Signature": sign(body, stamp.encode() + b".")}

    c.authenticate(headers=headers(NOW - timedelta(seconds=299)), body=body, now=NOW)
    with pytest.raises(AuthError, match="outside the allowed window"):
        c.authenticate(headers=headers(NOW - timedelta(seconds=301)), body=body, now=NOW)
    with pytest.raises(AuthError, match="outside the allowed window"):
        c.authenticate(headers=headers(NOW + timedelta(seconds=301)), body=body, now=NOW)
    # A fresh timestamp cannot be glued onto an old signature.
    old = headers(NOW - timedelta(hours=1))
    with pytest.raises(AuthError, match="invalid signature"):
        c.authenticate(
            headers={**old, "X-Timestamp": str(int(NOW.timestamp()))}, body=body, now=NOW
        )


def test_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_TEST_TOKEN", "t0ken-value")
    c = connector(auth=BearerAuth(kind="bearer", token=SecretRef(env="CRMSYNC_TEST_TOKEN")))
    c.authenticate(headers={"Authorization": "Bearer t0ken-value"}, body=b"", now=NOW)
    for presented in ("Bearer wrong", "Basic t0ken-value", "t0ken-value"):
        with pytest.raises(AuthError):
            c.authenticate(headers={"Authorization": presented}, body=b"", now=NOW)
    with pytest.raises(AuthError, match="missing Authorization"):
        c.authenticate(headers={}, body=b"", now=NOW)
