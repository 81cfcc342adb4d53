"""Shared building blocks of the crmsync services: config, contracts, serde, Kafka."""
