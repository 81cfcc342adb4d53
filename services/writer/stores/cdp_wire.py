"""The JSON shapes of the CDP profile API (docs/cdp-http-api.md), both ways.

The HTTP store encodes changes and decodes profiles with these; so does the fake
CDP the tests run, so both sides agree on one definition of the wire format.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from services.core.contracts import (
    Channel,
    ConsentChange,
    ConsentStatus,
    Identity,
    ProfileUpdate,
    UpdateOperation,
)
from services.writer.stores.base import (
    StoredAttribute,
    StoredConsentView,
    StoredProfile,
    StoredRetiredIdentity,
)


class WireError(ValueError):
    """A JSON document that is not a change or a profile of this API."""


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: Any, *, where: str) -> datetime:
    if not isinstance(text, str):
        raise WireError(f"{where} is not an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise WireError(f"{where} is not an ISO 8601 time: {text[:40]!r}") from exc
    if moment.tzinfo is None:
        raise WireError(f"{where} has no time zone")
    return moment.astimezone(UTC)


def idempotency_key(update: ProfileUpdate) -> str:
    """The same change always has the same key; different changes never share one."""
    parts = (
        update.source,
        update.event_id,
        update.operation.value,
        iso(update.source_modified_at),
        str(update.sequence),
        update.match_key,
    )
    return "crmsync-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


def change_json(update: ProfileUpdate) -> dict[str, Any]:
    return {
        "operation": update.operation.value.lower(),
        "source": update.source,
        "record_id": update.record_id,
        "event_id": update.event_id,
        "match_key": update.match_key,
        "identities": [{"kind": i.kind, "value": i.value} for i in update.identities],
        "source_modified_at": iso(update.source_modified_at),
        "received_at": iso(update.received_at),
        "sequence": update.sequence,
        "mapping_version": update.mapping_version,
        "attributes": dict(update.attributes),
        "cleared": list(update.cleared),
        "consents": [
            {
                "subscription": c.subscription,
                "channel": c.channel.value.lower(),
                "status": c.status.value.lower(),
                "changed_at": iso(c.changed_at),
            }
            for c in update.consents
        ],
        **(
            {"identities_version": list(update.identities_version)}
            if update.identities_version is not None
            else {}
        ),
    }


def change_from_json(body: Any) -> ProfileUpdate:
    if not isinstance(body, dict):
        raise WireError("a change is a JSON object")
    try:
        return ProfileUpdate(
            match_key=_text(body, "match_key"),
            source=_text(body, "source"),
            record_id=_text(body, "record_id"),
            event_id=_text(body, "event_id"),
            operation=UpdateOperation(_text(body, "operation").upper()),
            source_modified_at=parse_time(
                body.get("source_modified_at"), where="source_modified_at"
            ),
            received_at=parse_time(
                body.get("received_at", body.get("source_modified_at")), where="received_at"
            ),
            sequence=int(body.get("sequence", 0)),
            mapping_version=int(body.get("mapping_version", 0)),
            identities=tuple(Identity(i["kind"], i["value"]) for i in body.get("identities", [])),
            attributes=dict(body.get("attributes", {})),
            cleared=tuple(body.get("cleared", [])),
            consents=tuple(
                ConsentChange(
                    subscription=c["subscription"],
                    channel=Channel(c["channel"].upper()),
                    status=ConsentStatus(c["status"].upper()),
                    changed_at=parse_time(c["changed_at"], where="consents[].changed_at"),
                )
                for c in body.get("consents", [])
            ),
            identities_version=_version(body.get("identities_version")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"not a change: {exc}") from exc


def profile_json(profile: StoredProfile) -> dict[str, Any]:
    return {
        "profile_id": profile.profile_id,
        "identities": [{"kind": i.kind, "value": i.value} for i in profile.identities],
        "attributes": {
            name: {
                "value": a.value,
                "source": a.source,
                "source_modified_at": iso(a.source_modified_at),
                "mapping_version": a.mapping_version,
                "written_at": iso(a.written_at),
            }
            for name, a in profile.attributes.items()
        },
        "consents": [
            {
                "subscription": c.subscription,
                "channel": c.channel.lower(),
                "status": c.status.lower(),
                "changed_at": iso(c.changed_at),
                "source": c.source,
            }
            for c in profile.consents
        ],
        "created_at": iso(profile.created_at),
        "updated_at": iso(profile.updated_at),
        "retired_identities": [
            {
                "kind": r.identity.kind,
                "value": r.identity.value,
                "retired_at": iso(r.retired_at),
                "source": r.source,
                "record_id": r.record_id,
            }
            for r in profile.retired
        ],
    }


def profile_from_json(body: Any) -> StoredProfile:
    try:
        return StoredProfile(
            profile_id=int(body["profile_id"]),
            identities=tuple(Identity(i["kind"], i["value"]) for i in body["identities"]),
            attributes={
                name: StoredAttribute(
                    value=a["value"],
                    source=a["source"],
                    source_modified_at=parse_time(a["source_modified_at"], where="attribute time"),
                    mapping_version=int(a["mapping_version"]),
                    written_at=parse_time(a["written_at"], where="attribute written_at"),
                )
                for name, a in body["attributes"].items()
            },
            consents=tuple(
                StoredConsentView(
                    subscription=c["subscription"],
                    channel=c["channel"].upper(),
                    status=c["status"].upper(),
                    changed_at=parse_time(c["changed_at"], where="consent time"),
                    source=c["source"],
                )
                for c in body["consents"]
            ),
            created_at=parse_time(body["created_at"], where="created_at"),
            updated_at=parse_time(body["updated_at"], where="updated_at"),
            retired=tuple(
                StoredRetiredIdentity(
                    identity=Identity(r["kind"], r["value"]),
                    retired_at=parse_time(r["retired_at"], where="retired_at"),
                    source=r["source"],
                    record_id=r["record_id"],
                )
                for r in body.get("retired_identities", ())
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WireError(f"not a profile: {exc}") from exc


def _version(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    modified, sequence = value
    return (int(modified), int(sequence))


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise WireError(f"{name} is missing or not a string")
    return value
