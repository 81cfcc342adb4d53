"""The schemas topic: where every writer schema in use is published, by fingerprint.

A single-object-encoded message names its writer schema only by fingerprint. Before a
service produces anything it publishes the schemas it writes with to this compacted
topic (key: fingerprint hex, value: the schema's JSON), so that any reader, including
one built before that schema existed, can find the schema and resolve it against its
own. Readers consult the topic only for fingerprints they do not bundle themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Final

from confluent_kafka import KafkaException, Producer

from services.core.config import KafkaSettings
from services.core.kafka import TopicNames, client_config
from services.core.serde import RegisteredSchema
from services.core.topic_reader import read_compacted

log = logging.getLogger(__name__)

# A flood of messages with an unknown fingerprint must not turn into a flood of topic
# scans: after a scan, misses are answered from memory for this long.
RESCAN_INTERVAL_S: Final = 5.0
SCAN_TIMEOUT_S: Final = 30.0


class SchemaPublishError(RuntimeError):
    pass


def publish_schemas(
    *, producer: Producer, topic: str, schemas: Iterable[RegisteredSchema], timeout_s: float = 30.0
) -> None:
    """Publish schemas durably; raises if any is not acknowledged in time."""
    failures: list[str] = []

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for schema in schemas:
        producer.produce(
            topic,
            key=schema.fingerprint.hex().encode(),
            value=schema.schema_json.encode(),
            on_delivery=on_delivery,
        )
    remaining = producer.flush(timeout_s)
    if remaining or failures:
        raise SchemaPublishError(
            f"schemas not acknowledged on {topic}: {remaining} pending, errors: {failures}"
        )


class KafkaSchemaResolver:
    """Finds writer schemas by fingerprint by reading the schemas topic end to end."""

    def __init__(self, *, consumer_config: dict[str, Any], topic: str) -> None:
        self._config = consumer_config
        self._topic = topic
        self._known: dict[str, str] = {}
        self._scanned_at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self, schema_fingerprint: bytes) -> str | None:
        key = schema_fingerprint.hex()
        with self._lock:
            if key not in self._known and time.monotonic() - self._scanned_at > RESCAN_INTERVAL_S:
                self._scan()
            return self._known.get(key)

    def _scan(self) -> None:
        self._scanned_at = time.monotonic()
        try:
            found = read_compacted(self._config, topic=self._topic, timeout_s=SCAN_TIMEOUT_S)
        except KafkaException:
            log.warning("schemas topic scan failed topic=%s", self._topic, exc_info=True)
            return
        self._known.update({key.decode(): value.decode() for key, value in found.items()})


def schema_resolver(settings: KafkaSettings, *, client_id: str) -> KafkaSchemaResolver:
    """The resolver for this deployment's schemas topic."""
    return KafkaSchemaResolver(
        consumer_config=client_config(settings, client_id=client_id),
        topic=TopicNames.from_settings(settings).schemas,
    )
