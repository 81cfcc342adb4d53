"""Reading the barrier topic's controls, for each service that follows it: the
mapper (full syncs and source pauses), outbound (destination pauses), ingest (which
sources are paused) and the console."""

from __future__ import annotations

import logging

from confluent_kafka import Message

from services.core.codecs import Codec
from services.core.contracts import SyncControl
from services.core.serde import DecodeError

log = logging.getLogger(__name__)


def control_of(codec: Codec[SyncControl], message: Message) -> SyncControl | None:
    """The message's control; None for a tombstone, or for one that does not decode
    (logged and passed over: one bad control never stops a reader)."""
    value = message.value()
    if value is None:
        return None
    try:
        return codec.decode(value)
    except DecodeError as exc:
        log.error("undecodable SyncControl at offset %s ignored: %s", message.offset(), exc)
        return None
