"""Turning a CRM's JSON record into ContactChange fields, and reading its timestamps.

Nested objects are flattened with dots (``address.city``), lists of scalars become
lists of strings (multi-select values), and anything the wire contract cannot carry
faithfully (lists of objects, integers beyond 64 bits) is a PayloadError naming the
field, never a silent loss.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from services.core.contracts import ContactChange, FieldValue, RejectedEvent
from services.ingest.connectors.base import PayloadError

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
# Numbers above this are taken as Unix milliseconds rather than seconds (year 5138).
MILLIS_THRESHOLD: Final = 100_000_000_000


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json(body: bytes) -> Any:
    try:
        # RFC 8259: JSON between systems is UTF-8; json.loads(bytes) would also guess
        # UTF-16/32 from the first bytes, which no CRM sends on purpose.
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("body", f"not UTF-8: {exc.reason}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise PayloadError("body", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise PayloadError("body", "JSON nested too deeply") from None


def flatten(record: Mapping[str, Any], *, where: str) -> dict[str, FieldValue]:
    fields: dict[str, FieldValue] = {}
    _flatten_into(fields, record, prefix="", where=where)
    return fields


def _flatten_into(
    fields: dict[str, FieldValue], value: Mapping[str, Any], *, prefix: str, where: str
) -> None:
    for key, item in value.items():
        name = f"{prefix}{key}" if prefix else key
        kind = type(item)
        # Exact type checks first: JSON gives exactly these types, and this runs for
        # every field of every record (isinstance against an ABC is several times
        # slower).
        if kind is str or kind is bool or item is None or kind is float:
            fields[name] = item
        elif kind is dict or isinstance(item, Mapping):
            _flatten_into(fields, item, prefix=f"{name}.", where=where)
        else:
            fields[name] = scalar_or_list(item, where=f"{where}.{name}")


def scalar_or_list(value: Any, *, where: str) -> FieldValue:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise PayloadError(where, "integer out of the 64-bit range")
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, list):
        return [_text(item, where=where) for item in value]
    raise PayloadError(where, f"unsupported value of type {type(value).__name__}")


def _text(value: Any, *, where: str) -> str:
    """One multi-select item as text."""
    kind = type(value)
    if kind is str:
        return str(value)
    if value is None:
        return ""
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value)
    raise PayloadError(where, "lists of objects or lists are not supported")


def parse_timestamp(value: Any, *, where: str) -> datetime:
    """ISO 8601 (with a zone or UTC assumed) or Unix seconds / milliseconds."""
    if isinstance(value, bool) or value is None:
        raise PayloadError(where, "expected a timestamp")
    if isinstance(value, int | float):
        seconds = value / 1000 if abs(value) >= MILLIS_THRESHOLD else float(value)
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise PayloadError(where, f"timestamp {value} out of range") from None
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return parse_timestamp(int(text), where=where)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise PayloadError(where, f"not an ISO 8601 timestamp: {value[:40]!r}") from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    raise PayloadError(where, f"expected a timestamp, got {type(value).__name__}")


def record_identifier(value: Any, *, where: str) -> str:
    if isinstance(value, bool) or value is None:
        raise PayloadError(where, "missing or not an id")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise PayloadError(where, "must be a non-empty string or an integer")


def dotted(document: Any, path: str) -> Any:
    """The value at a dotted path (``data.items``) of parsed JSON, or None."""
    value = document
    for part in path.split(".") if path else ():
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def version_event_id(source: str, record_id: str, modified_at: datetime) -> str:
    """The event id of one version of a pulled record: the same version read by a poll,
    a full sync or a retried page gets the same id."""
    micros = int(modified_at.timestamp() * 1_000_000)
    return hashlib.sha256(f"{source}\x00{record_id}\x00{micros}".encode()).hexdigest()[:32]


def pulled_record_rejection(source: str, record: Any, *, reason: str) -> RejectedEvent:
    """A record read from a CRM's API that cannot become a change, kept raw."""
    raw = json.dumps(record, default=str, separators=(",", ":")).encode()
    return RejectedEvent(
        stage="ingest",
        reason=reason,
        rejected_at=datetime.now(UTC),
        source=source,
        key=source.encode(),
        value=raw,
        attributes={"path": "pull"},
    )


def pulled_changes(
    source: str,
    records: Iterable[tuple[str, Any]],
    *,
    convert: Callable[[Any, str], ContactChange],
) -> tuple[list[ContactChange], list[RejectedEvent]]:
    """A pulled page's records, each with where it sits, as changes. A record that is
    not valid is rejected with the reason instead of failing the page: it would fail
    every retry of the page too."""
    changes: list[ContactChange] = []
    rejected: list[RejectedEvent] = []
    for where, record in records:
        try:
            changes.append(convert(record, where))
        except PayloadError as exc:
            rejected.append(pulled_record_rejection(source, record, reason=str(exc)))
    return changes, rejected
