"""The SQL stores' outbox rows: one written part of a batch's ProfileChanged messages.

A row holds the part's events as Kafka messages, (key, encoded value) pairs packed with
MessagePack: the writer encodes each event once, inside the batch's transaction, and
the relay sends the bytes as they are. One row per part rather than per event: a batch
of 2,000 updates costs the store one insert and, once relayed, one delete.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

import msgspec

from services.core.codecs import load_contracts

ChangeEncoder = Callable[[Mapping[str, Any]], bytes]
"""A ProfileChanged record to its bytes on the topic (its codec's converter)."""
Message = tuple[bytes, bytes]

_DECODER = msgspec.msgpack.Decoder(list[tuple[bytes, bytes]])


class UnreadableRow(ValueError):
    """An outbox row that is not a list of messages."""


def pack(messages: Sequence[Message]) -> bytes:
    return msgspec.msgpack.encode(messages)


def unpack(row: bytes) -> list[Message]:
    try:
        return _DECODER.decode(row)
    except msgspec.DecodeError as exc:
        raise UnreadableRow(str(exc)) from exc


@cache
def standalone_encoder() -> ChangeEncoder:
    """The encoder of a store opened without the writer's codecs (tools, tests):
    single-object encoding with this version's schema."""
    return load_contracts().profile_changed.converter.encode
