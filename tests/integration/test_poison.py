"""An invalid entry still moves the offset: poison goes to rejected, the stream goes on."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from services.core.codecs import load_contracts
from tests.support.broker_fixtures import ReadAll
from tests.support.polling import wait_for
from tests.support.services import Stack
from tests.support.store import attribute
from tests.support.webhooks import contact, post_webhook

pytestmark = pytest.mark.integration


def produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def test_undecodable_change_and_update_are_rejected_with_their_origin(
    stack: Stack, kafka_bootstrap: str, read_topic: ReadAll
) -> None:
    stack.start()
    produce(kafka_bootstrap, stack.topic("changes"), b"demo:x", b"not avro at all")
    produce(kafka_bootstrap, stack.topic("profile-updates"), b"email:x", b"\xc3\x01garbage!")
    assert post_webhook(stack["ingest"].url, contact("after-poison", first_name="Ok"))[0] == 200
    assert wait_for(lambda: attribute(stack.db_path, record_id="after-poison", name="first_name"))

    rejected = [
        load_contracts().rejected_event.decode(m.value() or b"")
        for m in read_topic(stack.topic("rejected"), count=2)
    ]
    by_stage = {r.stage: r for r in rejected}
    assert set(by_stage) == {"mapper", "writer"}
    assert by_stage["mapper"].value == b"not avro at all"
    assert by_stage["mapper"].origin_topic == stack.topic("changes")
    assert by_stage["mapper"].origin_offset is not None
    assert "not Avro single-object encoded" in by_stage["mapper"].reason
    assert by_stage["writer"].value == b"\xc3\x01garbage!"
    assert by_stage["writer"].origin_topic == stack.topic("profile-updates")
    assert "undecodable ProfileUpdate" in by_stage["writer"].reason


def test_change_from_an_unconfigured_source_is_rejected(
    stack: Stack, kafka_bootstrap: str, read_topic: ReadAll
) -> None:
    from datetime import UTC, datetime

    from services.core.contracts import ContactChange, Operation

    stack.start("mapper")
    now = datetime.now(UTC)
    change = ContactChange(
        source="retired",
        record_id="1",
        operation=Operation.UPSERT,
        event_id="e1",
        source_modified_at=now,
        received_at=now,
        fields={"email": "a@b.co"},
    )
    produce(
        kafka_bootstrap,
        stack.topic("changes"),
        change.key,
        load_contracts().contact_change.encode(change),
    )
    [message] = read_topic(stack.topic("rejected"), count=1)
    rejected = load_contracts().rejected_event.decode(message.value() or b"")
    assert rejected.reason == "source 'retired' is not configured"
    assert rejected.source == "retired"
    assert rejected.event_id == "e1"


def test_an_impossible_value_is_rejected_with_its_field_and_the_stream_goes_on(
    stack: Stack, kafka_bootstrap: str, read_topic: ReadAll
) -> None:
    from datetime import UTC, datetime

    from services.core.contracts import ContactChange, Operation

    stack.start("mapper")
    now = datetime.now(UTC)
    contracts = load_contracts()
    for record, email in (("bad", "not-an-address"), ("good", "ada@example.com")):
        change = ContactChange(
            source="demo",
            record_id=record,
            operation=Operation.UPSERT,
            event_id=f"e-{record}",
            source_modified_at=now,
            received_at=now,
            fields={"email": email, "first_name": "Ada"},
        )
        produce(
            kafka_bootstrap,
            stack.topic("changes"),
            change.key,
            contracts.contact_change.encode(change),
        )
    [message] = read_topic(stack.topic("rejected"), count=1)
    rejected = contracts.rejected_event.decode(message.value() or b"")
    assert rejected.stage == "mapper"
    assert rejected.event_id == "e-bad"
    assert rejected.reason.startswith("email: not an email address")
    assert rejected.origin_topic == stack.topic("changes")
    [update] = read_topic(stack.topic("profile-updates"), count=1)
    mapped = contracts.profile_update.decode(update.value() or b"")
    assert mapped.record_id == "good"
    assert mapped.attributes["first_name"] == "Ada"
