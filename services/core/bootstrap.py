"""Getting a service's Kafka side ready: topics exist, writer schemas are published.

Every service runs this before it consumes or produces, and retries it with bounded
backoff while the cluster is unreachable, so the services can start in any order and
before the broker. Until it has succeeded the service reports itself not ready.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from confluent_kafka import KafkaException, Producer

from services.core.config import KafkaSettings
from services.core.kafka import TopicNames, ensure_topics, producer_config
from services.core.retry import RetryPolicy, Stopped, logged
from services.core.schema_registry import RegistryUnavailable, SchemaRegistry, register_schemas
from services.core.schema_topic import SchemaPublishError, publish_schemas
from services.core.serde import SchemaCatalog

log = logging.getLogger(__name__)


def prepare_kafka(settings: KafkaSettings, *, catalog: SchemaCatalog, client_id: str) -> None:
    """Create missing topics and publish this process's writer schemas: on the schemas
    topic, and to the schema registry when one is configured (blocking)."""
    ensure_topics(settings, client_id=client_id)
    producer = Producer(producer_config(settings, client_id=f"{client_id}-schemas"))
    topics = TopicNames.from_settings(settings)
    publish_schemas(producer=producer, topic=topics.schemas, schemas=catalog.schemas())
    if settings.schema_registry is not None:
        register_schemas(SchemaRegistry(settings.schema_registry), catalog, topics)


# Waits from half a second doubling to ten, with jitter: services started together do
# not knock on a starting broker in step.
KAFKA_RETRY: Final = RetryPolicy(initial_s=0.5, max_s=10.0)


async def prepare_kafka_with_retry(
    settings: KafkaSettings, *, catalog: SchemaCatalog, client_id: str, stop: asyncio.Event
) -> bool:
    """Retry ``prepare_kafka`` until it succeeds (True) or ``stop`` is set (False)."""
    if stop.is_set():
        return False
    try:
        async for attempt in KAFKA_RETRY.retrying_async(
            on=(KafkaException, SchemaPublishError, RegistryUnavailable),
            stop=stop,
            before_sleep=logged(log, "Kafka not ready"),
        ):
            with attempt:
                await asyncio.to_thread(
                    prepare_kafka, settings, catalog=catalog, client_id=client_id
                )
    except Stopped:
        return False
    return True
