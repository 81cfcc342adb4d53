"""crmsync creates its topics from the config, and refuses a partition-count drift."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from services.core.config import KafkaSettings, parse_settings
from services.core.kafka import TopicMismatchError, TopicNames, ensure_topics
from tests.support.polling import wait_for

pytestmark = pytest.mark.integration


def settings_for(bootstrap: str, prefix: str, partitions: int) -> KafkaSettings:
    return parse_settings(
        f"kafka:\n  bootstrap_servers: {bootstrap}\n  topics:\n    prefix: {prefix}\n"
        f"    changes: {{partitions: {partitions}}}\n    fullsync: {{partitions: {partitions}}}\n"
        "store: {kind: sqlite}\n",
        file="x.yaml",
    ).kafka


def test_topics_are_created_with_partitions_and_cleanup_policy(kafka_bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    kafka = settings_for(kafka_bootstrap, prefix, 4)
    created = ensure_topics(kafka)
    names = TopicNames.from_settings(kafka)
    assert len(created) == 10
    assert names.profile_changes in created
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    metadata = wait_for(
        lambda: (m := admin.list_topics(timeout=10)).topics.get(names.fullsync) and m
    )
    assert len(metadata.topics[names.changes].partitions) == 4
    assert len(metadata.topics[names.fullsync].partitions) == 4
    # The mapper's state changelog follows the changes topic, partition for partition.
    assert len(metadata.topics[names.mapper_state].partitions) == 4
    resource = ConfigResource(ResourceType.TOPIC, names.schemas)
    config = admin.describe_configs([resource])[resource].result()
    assert config["cleanup.policy"].value == "compact"
    resource = ConfigResource(ResourceType.TOPIC, names.mapper_state)
    config = admin.describe_configs([resource])[resource].result()
    assert config["cleanup.policy"].value == "compact"

    assert ensure_topics(kafka) == []  # idempotent


def test_partition_drift_is_an_error_not_a_silent_rekeying(kafka_bootstrap: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    ensure_topics(settings_for(kafka_bootstrap, prefix, 2))
    with pytest.raises(TopicMismatchError, match=r"changes has 2 partitions, config says 3"):
        ensure_topics(settings_for(kafka_bootstrap, prefix, 3))
