"""Writer schemas published to the schemas topic let an older reader decode newer data."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from services.core.codecs import load_contracts, schemas_dir
from services.core.schema_topic import KafkaSchemaResolver, publish_schemas
from services.core.serde import Converter, SchemaCatalog, schema_from_json

pytestmark = pytest.mark.integration


def test_reader_finds_an_unknown_writer_schema_on_the_topic(kafka_bootstrap: str) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}.schemas"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"cleanup.policy": "compact"})])[
        topic
    ].result()

    newer = json.loads((schemas_dir() / "contact_change.avsc").read_text())
    newer["fields"].append({"name": "campaign", "type": "string", "default": ""})
    writer_schema = schema_from_json(newer)
    publish_schemas(
        producer=Producer({"bootstrap.servers": kafka_bootstrap}),
        topic=topic,
        schemas=[writer_schema],
    )
    now_record = {
        "source": "demo",
        "record_id": "1",
        "operation": "UPSERT",
        "event_id": "e",
        "source_modified_at": 0,
        "sequence": 0,
        "received_at": 0,
        "origin": "POLL",
        "sync_id": None,
        "fields": {"a": 1},
        "campaign": "winter",
    }
    data = Converter(schema=writer_schema, catalog=SchemaCatalog()).encode(now_record)

    reader = load_contracts()
    reader.catalog.add_resolver(
        KafkaSchemaResolver(consumer_config={"bootstrap.servers": kafka_bootstrap}, topic=topic)
    )
    change = reader.contact_change.decode(data)
    assert change.record_id == "1"
    assert change.fields == {"a": 1}
