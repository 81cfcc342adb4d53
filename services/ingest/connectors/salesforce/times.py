"""Salesforce times: its datetime formats, and SOQL datetime literals."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from services.ingest.connectors.base import (
    PayloadError,
)

# Salesforce writes dateTimes as 2026-11-23T09:00:00.000+0000 (REST) or ...000Z (SOAP,
# change events); fromisoformat is given one normalised shape rather than trusted.
SALESFORCE_TIME: Final = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})$"
)


def salesforce_time(value: Any, *, where: str) -> datetime:
    """A Salesforce dateTime (text with a zone, or Unix milliseconds as change events
    decoded from Avro carry them) as a UTC datetime."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            raise PayloadError(where, f"timestamp {value} out of range") from None
    if not isinstance(value, str):
        raise PayloadError(where, "expected a Salesforce dateTime")
    match = SALESFORCE_TIME.match(value.strip())
    if match is None:
        raise PayloadError(where, f"not a Salesforce dateTime: {value[:40]!r}")
    moment, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else f"{zone[:3]}:{zone[-2:]}"
    micros = (fraction or "").ljust(6, "0")[:6]
    try:
        return datetime.fromisoformat(f"{moment}.{micros}{zone}").astimezone(UTC)
    except ValueError:
        raise PayloadError(where, f"not a Salesforce dateTime: {value[:40]!r}") from None


def soql_datetime(moment: datetime) -> str:
    """A SOQL dateTime literal in the documented ``YYYY-MM-DDThh:mm:ssZ`` form; the
    fraction is dropped (floored), so a ``>=`` filter may read a little more, never less."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever its case (aiohttp's headers already are)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)
