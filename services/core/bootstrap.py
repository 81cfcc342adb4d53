"""Getting a service's Kafka side ready: topics exist, writer schemas are published.

Every service runs this before it consumes or produces, and retries it with bounded
backoff while the cluster is unreachable, so the services can start in any order and
before the broker. Until it has succeeded the service reports itself not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from typing import Final

from confluent_kafka import KafkaException, Producer

from services.core.config import KafkaSettings
from services.core.kafka import TopicNames, ensure_topics, producer_config
from services.core.schema_topic import SchemaPublishError, publish_schemas
from services.core.serde import SchemaCatalog

log = logging.getLogger(__name__)

FIRST_RETRY_S: Final = 0.5
MAX_RETRY_S: Final = 10.0


def prepare_kafka(settings: KafkaSettings, *, catalog: SchemaCatalog, client_id: str) -> None:
    """Create missing topics and publish this process's writer schemas (blocking)."""
    ensure_topics(settings, client_id=client_id)
    producer = Producer(producer_config(settings, client_id=f"{client_id}-schemas"))
    publish_schemas(
        producer=producer,
        topic=TopicNames.from_settings(settings).schemas,
        schemas=catalog.schemas(),
    )


async def prepare_kafka_with_retry(
    settings: KafkaSettings, *, catalog: SchemaCatalog, client_id: str, stop: asyncio.Event
) -> bool:
    """Retry ``prepare_kafka`` until it succeeds (True) or ``stop`` is set (False)."""
    delay = FIRST_RETRY_S
    while not stop.is_set():
        try:
            await asyncio.to_thread(prepare_kafka, settings, catalog=catalog, client_id=client_id)
            return True
        except (KafkaException, SchemaPublishError) as exc:
            log.warning("Kafka not ready, retrying in %.1fs: %s", delay, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, MAX_RETRY_S)
    return False


def prepare_kafka_blocking(
    settings: KafkaSettings, *, catalog: SchemaCatalog, client_id: str
) -> bool:
    """``prepare_kafka`` with retries for a process without an event loop yet.

    Returns False when SIGTERM arrives before Kafka was prepared.
    """
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    delay = FIRST_RETRY_S
    try:
        while not stop.is_set():
            try:
                prepare_kafka(settings, catalog=catalog, client_id=client_id)
                return True
            except (KafkaException, SchemaPublishError) as exc:
                log.warning("Kafka not ready, retrying in %.1fs: %s", delay, exc)
            stop.wait(delay)
            delay = min(delay * 2, MAX_RETRY_S)
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)
