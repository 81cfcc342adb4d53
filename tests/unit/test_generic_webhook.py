"""The generic webhook connector: payload parsing and sender verification."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.core.contracts import Operation
from services.core.settings_base import SecretRef
from services.core.sources.common import BearerAuth, HmacSha256Auth, NoAuth, StandardWebhooksAuth
from services.core.sources.generic import GenericWebhookSource
from services.ingest.connectors.base import AuthError, InboundRequest, PayloadError
from services.ingest.connectors.generic import GenericWebhookConnector

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def connector(**settings: Any) -> GenericWebhookConnector:
    values: dict[str, Any] = {"kind": "generic_webhook", "auth": NoAuth(kind="none")}
    values.update(settings)
    return GenericWebhookConnector(source="demo", settings=GenericWebhookSource(**values))


def request(body: bytes, headers: dict[str, str] | None = None) -> InboundRequest:
    return InboundRequest(
        method="POST", url="https://crmsync.example/webhooks/demo", headers=headers or {}, body=body
    )


def parse(body: Any, headers: dict[str, str] | None = None, **settings: Any) -> list[Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return list(connector(**settings).parse(request(raw, headers), received_at=NOW))


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
    c.authenticate(request(body, {"X-Signature": sign(body)}), now=NOW)
    c.authenticate(request(body, {"X-Signature": "sha256=" + sign(body)}), now=NOW)
    with pytest.raises(AuthError, match="invalid signature"):
        c.authenticate(request(body, {"X-Signature": sign(body + b" ")}), now=NOW)
    with pytest.raises(AuthError, match="missing X-Signature"):
        c.authenticate(request(body, {}), now=NOW)


def test_signed_timestamp_bounds_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    c = hmac_connector(monkeypatch, timestamp_header="X-Timestamp", tolerance_seconds=300)
    body = b'{"id": 1}'

    def headers(at: datetime) -> dict[str, str]:
        stamp = str(int(at.timestamp()))
        return {"X-Timestamp": stamp, "X-Signature": sign(body, stamp.encode() + b".")}

    c.authenticate(request(body, headers(NOW - timedelta(seconds=299))), now=NOW)
    with pytest.raises(AuthError, match="outside the allowed window"):
        c.authenticate(request(body, headers(NOW - timedelta(seconds=301))), now=NOW)
    with pytest.raises(AuthError, match="outside the allowed window"):
        c.authenticate(request(body, headers(NOW + timedelta(seconds=301))), now=NOW)
    # A fresh timestamp cannot be glued onto an old signature.
    old = headers(NOW - timedelta(hours=1))
    with pytest.raises(AuthError, match="invalid signature"):
        c.authenticate(request(body, {**old, "X-Timestamp": str(int(NOW.timestamp()))}), now=NOW)


def test_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_TEST_TOKEN", "t0ken-value")
    c = connector(auth=BearerAuth(kind="bearer", token=SecretRef(env="CRMSYNC_TEST_TOKEN")))
    c.authenticate(request(b"", {"Authorization": "Bearer t0ken-value"}), now=NOW)
    for presented in ("Bearer wrong", "Basic t0ken-value", "t0ken-value"):
        with pytest.raises(AuthError):
            c.authenticate(request(b"", {"Authorization": presented}), now=NOW)
    with pytest.raises(AuthError, match="missing Authorization"):
        c.authenticate(request(b"", {}), now=NOW)


# Standard Webhooks test vector from the specification's reference libraries.
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_TIMESTAMP = "1614265330"
SW_BODY = b'{"test": 2432232314}'
SW_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def standard_connector(monkeypatch: pytest.MonkeyPatch) -> GenericWebhookConnector:
    monkeypatch.setenv("CRMSYNC_TEST_SW", SW_SECRET)
    return connector(
        auth=StandardWebhooksAuth(kind="standard_webhooks", secret=SecretRef(env="CRMSYNC_TEST_SW"))
    )


def sw_headers(**overrides: str) -> dict[str, str]:
    return {
        "webhook-id": SW_ID,
        "webhook-timestamp": SW_TIMESTAMP,
        "webhook-signature": SW_SIGNATURE,
        **overrides,
    }


SW_NOW = datetime.fromtimestamp(int(SW_TIMESTAMP), UTC)


def test_standard_webhooks_reference_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    c = standard_connector(monkeypatch)
    c.authenticate(request(SW_BODY, sw_headers()), now=SW_NOW)
    # Several signatures during a secret rotation: any valid v1 one passes.
    rotated = sw_headers(**{"webhook-signature": f"v1,bm9wZQ== {SW_SIGNATURE}"})
    c.authenticate(request(SW_BODY, rotated), now=SW_NOW)


@pytest.mark.parametrize(
    ("headers", "now", "message"),
    [
        (sw_headers(**{"webhook-signature": "v1,bm9wZQ=="}), SW_NOW, "invalid signature"),
        (sw_headers(**{"webhook-signature": SW_SIGNATURE.replace("v1", "v2")}), SW_NOW, "invalid"),
        (sw_headers(**{"webhook-id": "msg_other"}), SW_NOW, "invalid signature"),
        (sw_headers(), SW_NOW + timedelta(minutes=6), "outside the allowed window"),
        ({"webhook-id": SW_ID, "webhook-timestamp": SW_TIMESTAMP}, SW_NOW, "missing webhook-sig"),
    ],
)
def test_standard_webhooks_refusals(
    monkeypatch: pytest.MonkeyPatch, headers: dict[str, str], now: datetime, message: str
) -> None:
    c = standard_connector(monkeypatch)
    with pytest.raises(AuthError, match=message):
        c.authenticate(request(SW_BODY, headers), now=now)


def test_standard_webhooks_message_id_becomes_the_event_id() -> None:
    body = [{"id": "a", "updated_at": 1}, {"id": "b", "updated_at": 1}]
    changes = parse(body, {"webhook-id": "msg_42"})
    assert [c.event_id for c in changes] == ["msg_42:0", "msg_42:1"]
