"""How many profile changes wait for each destination: the ``profile-changes`` topic's
end, partition by partition, against the position its consumer group committed (a
destination that never committed starts at the topic's earliest offset)."""

from __future__ import annotations

from typing import Final

from confluent_kafka import Consumer, TopicPartition

from services.core.config import Settings
from services.core.kafka import TopicNames, client_config, watermarks

LOOKUP_TIMEOUT_S: Final = 10.0


def group_of(settings: Settings, destination: str) -> str:
    """Each destination's consumer group: its own place in the profile changes."""
    return f"{settings.kafka.topics.prefix}outbound.{destination}"


def waiting_changes(settings: Settings) -> dict[str, int]:
    """Per destination, the changes not yet delivered (or dead-lettered)."""
    return {
        name: sum(max(0, end - position) for position, end in places.values())
        for name, places in destination_places(settings).items()
    }


def destination_places(settings: Settings) -> dict[str, dict[int, tuple[int, int]]]:
    """Per destination and partition of the profile changes: the offset its loop
    goes on from (what is before it was delivered or dead-lettered) and the end."""
    topic = TopicNames.from_settings(settings.kafka).profile_changes
    places: dict[str, dict[int, tuple[int, int]]] = {}
    for name in settings.destinations:
        consumer = Consumer(
            {
                **client_config(settings.kafka, client_id="crmsync-destination-backlog"),
                "group.id": group_of(settings, name),
                "enable.auto.commit": False,
            }
        )
        try:
            metadata = consumer.list_topics(topic, timeout=LOOKUP_TIMEOUT_S).topics.get(topic)
            places[name] = {}
            if metadata is None or metadata.error is not None:
                continue  # no topic yet: nothing was ever committed to a store
            partitions = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
            for position in consumer.committed(partitions, timeout=LOOKUP_TIMEOUT_S):
                low, high = watermarks(
                    consumer, TopicPartition(topic, position.partition), timeout_s=LOOKUP_TIMEOUT_S
                )
                start = position.offset if position.offset >= 0 else low
                places[name][position.partition] = (start, high)
        finally:
            consumer.close()
    return places
