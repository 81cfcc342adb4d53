"""With ``kafka.schema_registry`` configured, crmsync's topics are in the Confluent wire
format, readable by any Schema Registry-aware consumer: here one using nothing but
confluent-kafka's AvroDeserializer, against a real registry."""

from __future__ import annotations

import copy
import json
import uuid

import pytest
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from services.core.codecs import load_contracts, schemas_dir
from services.core.config import KafkaSettings, SchemaRegistrySettings
from services.core.kafka import TopicNames
from services.core.schema_registry import SchemaRegistry, SchemaRejected, register_schemas
from services.core.serde import Converter, SchemaCatalog, schema_from_json
from tests.support.polling import wait_for
from tests.support.services import Stack
from tests.support.store import attribute
from tests.support.webhooks import contact, post_webhook

pytestmark = pytest.mark.integration


def read_values(bootstrap: str, topic: str, *, count: int) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(120):
            for message in consumer.consume(count, 0.5):
                if message.error() is None and message.value() is not None:
                    values.append(message.value() or b"")
            if len(values) >= count:
                break
    finally:
        consumer.close()
    return values


def test_a_registry_aware_consumer_reads_profile_updates(
    stack: Stack, schema_registry_url: str
) -> None:
    stack.config["kafka"]["schema_registry"] = {"url": schema_registry_url}
    stack.write_config()
    stack.start()
    answer = post_webhook(
        stack["ingest"].url, contact("sr1", email="Sr@Example.com", first_name="Reg")
    )
    assert answer[0] == 200, answer
    # crmsync itself reads what it wrote: the writer stored the profile.
    assert wait_for(lambda: attribute(stack.db_path, record_id="sr1", name="first_name"))

    topic = stack.topic("profile-updates")
    values = read_values(stack.bootstrap, topic, count=1)
    assert values and values[0][:1] == b"\x00", "not in the Confluent wire format"
    registry = SchemaRegistryClient({"url": schema_registry_url})
    deserialize = AvroDeserializer(registry)
    update = deserialize(values[0], SerializationContext(topic, MessageField.VALUE))
    assert isinstance(update, dict)
    assert update["source"] == "demo"
    assert update["record_id"] == "sr1"
    assert {"kind": "email", "value": "sr@example.com"} in update["identities"]
    # Registered under the TopicNameStrategy's subjects.
    subjects = set(registry.get_subjects())
    assert {f"{topic}-value", f"{stack.topic('changes')}-value"} <= subjects
    latest = registry.get_latest_version(f"{topic}-value")
    assert json.loads(latest.schema.schema_str)["name"] in (
        "ProfileUpdate",
        "crmsync.ProfileUpdate",
    )


def test_an_incompatible_schema_is_refused_with_the_registrys_reason(
    schema_registry_url: str,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    topics = TopicNames.from_settings(
        KafkaSettings.model_validate(
            {"bootstrap_servers": "127.0.0.1:1", "topics": {"prefix": prefix}}
        )
    )
    registry = SchemaRegistry(SchemaRegistrySettings(url=schema_registry_url))
    register_schemas(registry, load_contracts().catalog, topics)
    # The next version adds a field without a default: old data could not be read.
    changed = json.loads((schemas_dir() / "profile_update.avsc").read_text())
    changed = copy.deepcopy(changed)
    changed["fields"].append({"name": "campaign", "type": "string"})
    catalog = SchemaCatalog()
    Converter(schema=schema_from_json(changed), catalog=catalog)
    with pytest.raises(SchemaRejected, match=r"refused crmsync.ProfileUpdate .*HTTP 409"):
        register_schemas(registry, catalog, topics)
