"""Profile updates no CRM sent, put on the profile-updates topic by an operator (the CLI,
the console): an erasure, a split.

Each goes keyed like every update of its match key and is waited for until the broker
acknowledges it; the writer then applies it in order with the other changes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

from confluent_kafka import KafkaError, Producer

from services.core.bootstrap import prepare_kafka
from services.core.codecs import load_contracts
from services.core.config import Settings
from services.core.contracts import Identity, ProfileUpdate, UpdateOperation
from services.core.kafka import TopicNames, producer_config

FLUSH_TIMEOUT_S: Final = 30.0
SPLIT_SOURCE: Final = "split"
"""The source of a split's update (its record id is the merged profile's id)."""


class UpdateNotSent(RuntimeError):
    pass


def admin_update(
    operation: UpdateOperation,
    *,
    source: str,
    record_id: str,
    match_key: str,
    identities: tuple[Identity, ...],
    prefix: str,
    at: datetime | None = None,
) -> ProfileUpdate:
    """An update no CRM sent: the event id names what it is (``prefix``)."""
    now = at or datetime.now(UTC)
    event_id = f"{prefix}-{uuid.uuid4().hex}"
    return ProfileUpdate(
        match_key=match_key,
        source=source,
        record_id=record_id or event_id,
        event_id=event_id,
        operation=operation,
        source_modified_at=now,
        received_at=now,
        identities=identities,
        attributes={},
    )


def split_update(merged_id: int) -> ProfileUpdate:
    """The update that undoes the merge of profile ``merged_id`` (the writer gives its
    records back to a profile of that id, and keeps the two apart)."""
    return admin_update(
        UpdateOperation.SPLIT,
        source=SPLIT_SOURCE,
        record_id=str(merged_id),
        match_key=f"profile:{merged_id}",
        identities=(),
        prefix="split",
    )


def send_update(settings: Settings, update: ProfileUpdate, *, what: str) -> None:
    """Put ``update`` on profile-updates; raises UpdateNotSent unless acknowledged."""
    contracts = load_contracts()
    # Its schema published (and registered, with a schema registry) before it is used.
    prepare_kafka(settings.kafka, catalog=contracts.catalog, client_id="crmsync-cli")
    producer = Producer(producer_config(settings.kafka, client_id="crmsync-cli"))
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    producer.produce(
        TopicNames.from_settings(settings.kafka).profile_updates,
        key=update.key,
        value=contracts.profile_update.encode(update),
        on_delivery=delivered,
    )
    if producer.flush(FLUSH_TIMEOUT_S) or failures:
        raise UpdateNotSent(f"the broker did not acknowledge the {what}: {failures or 'timeout'}")
