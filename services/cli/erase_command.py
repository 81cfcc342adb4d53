"""``crmsync profile erase``: the right to erasure, as a change the writer applies.

The command puts an ERASE ProfileUpdate for the identity on the profile-updates
topic, keyed like every update of that identity, and waits for the broker to
acknowledge it. The writer then removes the profile's personal data and keeps
tombstones (hashes of its identities) so no late event brings it back; an event
newer than the erasure (a fresh sign-up) starts a new profile.
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

ERASURE_SOURCE: Final = "erasure"
FLUSH_TIMEOUT_S: Final = 30.0


class ErasureNotSent(RuntimeError):
    pass


def erase(settings: Settings, identity: Identity, *, requested_at: datetime | None = None) -> str:
    """Send the erasure of ``identity``'s profile; returns the erasure's event id."""
    now = requested_at or datetime.now(UTC)
    event_id = f"erase-{uuid.uuid4().hex}"
    update = ProfileUpdate(
        match_key=f"{identity.kind}:{identity.value}",
        source=ERASURE_SOURCE,
        record_id=event_id,
        event_id=event_id,
        operation=UpdateOperation.ERASE,
        source_modified_at=now,
        received_at=now,
        identities=(identity,),
        attributes={},
    )
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
        raise ErasureNotSent(f"the broker did not acknowledge the erasure: {failures or 'timeout'}")
    return event_id
