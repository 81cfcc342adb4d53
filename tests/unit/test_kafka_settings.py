"""Kafka client settings: pass-through security, secrets from the environment, topics."""

from __future__ import annotations

import pytest

from services.core.config import KafkaSettings, parse_settings
from services.core.kafka import (
    TopicNames,
    client_config,
    consumer_config,
    producer_config,
    topic_specs,
)

pytestmark = pytest.mark.unit

MANAGED = """\
kafka:
  bootstrap_servers: b1.example.net:9093,b2.example.net:9093
  client:
    security.protocol: SASL_SSL
    sasl.mechanism: SCRAM-SHA-512
    sasl.username: crmsync
  secrets:
    sasl.password: {env: CRMSYNC_TEST_KAFKA_PASSWORD}
  topics: {prefix: "prod."}
store: {kind: sqlite}
"""


@pytest.fixture
def managed(monkeypatch: pytest.MonkeyPatch) -> KafkaSettings:
    monkeypatch.setenv("CRMSYNC_TEST_KAFKA_PASSWORD", "pa55-w0rd")
    return parse_settings(MANAGED, file="x.yaml").kafka


def test_security_settings_and_secrets_reach_every_client(managed: KafkaSettings) -> None:
    config = client_config(managed, client_id="c")
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.password"] == "pa55-w0rd"
    assert config["bootstrap.servers"] == "b1.example.net:9093,b2.example.net:9093"


def test_producers_are_idempotent_with_acks_all(managed: KafkaSettings) -> None:
    config = producer_config(managed, client_id="p")
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["security.protocol"] == "SASL_SSL"


def test_consumers_commit_only_by_hand(managed: KafkaSettings) -> None:
    config = consumer_config(managed, client_id="c", group_id="g")
    assert config["enable.auto.commit"] is False
    assert config["isolation.level"] == "read_committed"


def test_topic_names_follow_the_prefix(managed: KafkaSettings) -> None:
    names = TopicNames.from_settings(managed)
    assert names.changes == "prod.changes"
    assert names.profile_updates == "prod.profile-updates"
    specs = topic_specs(managed)
    assert specs["prod.schemas"].config["cleanup.policy"] == "compact"
    assert specs["prod.changes"].partitions == specs["prod.fullsync"].partitions
    # The mapper's state changelog: one partition per changes partition, compacted.
    assert specs["prod.mapper-state"].partitions == specs["prod.changes"].partitions
    assert specs["prod.mapper-state"].config["cleanup.policy"] == "compact"
