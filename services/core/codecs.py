"""The contracts' codecs: each contract type joined to its schema's ``Converter``,
bytes from Kafka in, a typed value out, and back (``load_contracts``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from services.core.contracts import (
    AuditEvent,
    ContactChange,
    ProfileUpdate,
    RejectedEvent,
    SyncControl,
)
from services.core.profile_changed import ProfileChanged
from services.core.serde import Converter, DecodeError, SchemaCatalog, load_schema_file

SCHEMAS_DIR_ENV: Final = "CRMSYNC_SCHEMAS_DIR"


def schemas_dir() -> Path:
    configured = os.environ.get(SCHEMAS_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "schemas"


T = TypeVar("T")


class Codec(Generic[T]):
    """Bytes <-> one contract's dataclass, through that contract's Avro converter."""

    def __init__(
        self,
        *,
        converter: Converter,
        to_record: Callable[[T], Mapping[str, Any]],
        from_record: Callable[[Mapping[str, Any]], T],
    ) -> None:
        self.converter = converter
        self._to_record = to_record
        self._from_record = from_record

    def encode(self, value: T) -> bytes:
        return self.converter.encode(self._to_record(value))

    def decode(self, data: bytes) -> T:
        """Raises DecodeError for bytes that are not a record of this type, whether Avro
        refuses them or the typed value does (an enum symbol it does not know)."""
        record = self.converter.decode(data)
        try:
            return self._from_record(record)
        except (KeyError, ValueError, TypeError) as exc:
            raise DecodeError(
                f"{self.converter.schema.full_name} record does not fit its type: {exc!r}"
            ) from exc


@dataclass(frozen=True)
class WireContracts:
    """One codec per contract, sharing one schema catalog."""

    catalog: SchemaCatalog
    contact_change: Codec[ContactChange]
    profile_update: Codec[ProfileUpdate]
    sync_control: Codec[SyncControl]
    rejected_event: Codec[RejectedEvent]
    audit_event: Codec[AuditEvent]
    profile_changed: Codec[ProfileChanged]


SCHEMA_FILES: Final = {
    "contact_change": "contact_change.avsc",
    "profile_update": "profile_update.avsc",
    "sync_control": "sync_control.avsc",
    "rejected_event": "rejected_event.avsc",
    "audit_event": "audit_event.avsc",
    "profile_changed": "profile_changed.avsc",
}


def load_contracts(
    *, catalog: SchemaCatalog | None = None, directory: Path | None = None
) -> WireContracts:
    catalog = catalog or SchemaCatalog()
    base = directory or schemas_dir()

    def converter(name: str) -> Converter:
        return Converter(schema=load_schema_file(base / SCHEMA_FILES[name]), catalog=catalog)

    return WireContracts(
        catalog=catalog,
        contact_change=Codec(
            converter=converter("contact_change"),
            to_record=ContactChange.to_record,
            from_record=ContactChange.from_record,
        ),
        profile_update=Codec(
            converter=converter("profile_update"),
            to_record=ProfileUpdate.to_record,
            from_record=ProfileUpdate.from_record,
        ),
        sync_control=Codec(
            converter=converter("sync_control"),
            to_record=SyncControl.to_record,
            from_record=SyncControl.from_record,
        ),
        rejected_event=Codec(
            converter=converter("rejected_event"),
            to_record=RejectedEvent.to_record,
            from_record=RejectedEvent.from_record,
        ),
        audit_event=Codec(
            converter=converter("audit_event"),
            to_record=AuditEvent.to_record,
            from_record=AuditEvent.from_record,
        ),
        profile_changed=Codec(
            converter=converter("profile_changed"),
            to_record=ProfileChanged.to_record,
            from_record=ProfileChanged.from_record,
        ),
    )
