"""What the console indexes of each message: rows for its index (index.py).

One function per topic turns a decoded message into rows: a change received, what
the mapper decided, what the store took, a rejection, a full sync's or a pause's
control. An email is kept with each row that names one, so that a contact's history
is found by its email as well as by its records and profile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from services.console.index import (
    APPLIED,
    INVALID,
    RECEIVED,
    REJECTED,
    ControlRow,
    Count,
    RejectionRow,
    Row,
    TimelineRow,
    Where,
)
from services.core.codecs import WireContracts
from services.core.contracts import (
    AuditEvent,
    ContactChange,
    FieldValue,
    Identity,
    ProfileUpdate,
    RejectedEvent,
    SyncControl,
)
from services.core.kafka import TopicNames
from services.core.profile_changed import ProfileChanged, ProfileChangeKind
from services.core.serde import DecodeError

EMAIL: Final = "email"


class MessageRows:
    """Rows of one message, by its topic; ``email_fields`` names each source's email
    field (a change's email is found there)."""

    def __init__(
        self,
        *,
        topics: TopicNames,
        contracts: WireContracts,
        email_fields: Mapping[str, str | None],
    ) -> None:
        self._topics = topics
        self._contracts = contracts
        self._email_fields = email_fields
        self._by_topic: dict[str, Callable[[Where, bytes], list[Row]]] = {
            topics.changes: self._change,
            topics.audit: self._audit,
            topics.profile_changes: self._profile_changed,
            topics.rejected: self._rejected,
            topics.barrier: self._control,
        }

    @property
    def topics(self) -> list[str]:
        return list(self._by_topic)

    def of(self, where: Where, value: bytes | None) -> list[Row]:
        """The message's rows; none for a tombstone. Raises DecodeError."""
        if value is None:
            return []
        return self._by_topic[where.topic](where, value)

    def _change(self, where: Where, value: bytes) -> list[Row]:
        change = self._contracts.contact_change.decode(value)
        return [
            TimelineRow(
                where=where,
                at=change.received_at,
                kind="received",
                source=change.source,
                record_id=change.record_id,
                email=self._email_of(change),
                event_id=change.event_id,
                detail={
                    "origin": change.origin.value,
                    "operation": change.operation.value,
                    "modified_at": change.source_modified_at.isoformat(),
                    "fields": dict(change.fields),
                },
            ),
            Count(change.source, _day(change.received_at), RECEIVED),
        ]

    def _audit(self, where: Where, value: bytes) -> list[Row]:
        audit: AuditEvent = self._contracts.audit_event.decode(value)
        kind, _, key_value = audit.match_key.partition(":")
        detail: dict[str, Any] = {
            "stage": audit.stage,
            "mapping_version": audit.mapping_version,
            "changes": [
                {"field": c.field, "old": c.old_value, "new": c.new_value, "rule": c.rule}
                for c in audit.changes
            ],
            "dropped": [
                {"field": d.field, "code": d.code, "reason": d.reason} for d in audit.dropped
            ],
        }
        if audit.merge is not None:
            detail["merge"] = {
                "merged_profile_id": audit.merge.merged_profile_id,
                "into_profile_id": audit.merge.into_profile_id,
            }
        invalid = sum(1 for d in audit.dropped if d.code == INVALID)
        counted: list[Row] = (
            [Count(audit.source, _day(audit.decided_at), INVALID, invalid)] if invalid else []
        )
        return [
            *counted,
            TimelineRow(
                where=where,
                at=audit.decided_at,
                kind="decided" if audit.stage == "mapper" else audit.stage,
                source=audit.source,
                record_id=audit.record_id,
                email=key_value if kind == EMAIL else None,
                profile_id=audit.merge.into_profile_id if audit.merge is not None else None,
                event_id=audit.event_id,
                detail=detail,
            ),
        ]

    def _profile_changed(self, where: Where, value: bytes) -> list[Row]:
        event: ProfileChanged = self._contracts.profile_changed.decode(value)
        if event.kind is ProfileChangeKind.SNAPSHOT:
            return []  # a backfill's copy of the profile, not a change of it
        return [
            TimelineRow(
                where=where,
                at=event.committed_at,
                kind="written",
                source=event.source,
                record_id=event.record_id,
                email=_email_in(event.identities),
                profile_id=event.profile_id,
                event_id=event.source_event_id,
                detail={
                    "change": event.kind.value,
                    "event_id": event.event_id,
                    "partition": where.partition,
                    "offset": where.offset,
                    "attributes": [
                        {"name": a.name, "old": a.old_value, "new": a.new_value}
                        for a in event.attributes
                    ],
                    "consents": [
                        {
                            "subscription": c.subscription,
                            "channel": c.channel,
                            "old": c.old_status,
                            "new": c.new_status,
                        }
                        for c in event.consents
                    ],
                    "identities_added": [f"{i.kind}:{i.value}" for i in event.identities_added],
                    "identities_removed": [f"{i.kind}:{i.value}" for i in event.identities_removed],
                    "merged_profile_ids": list(event.merged_profile_ids),
                },
            ),
            Count(event.source, _day(event.committed_at), APPLIED),
        ]

    def _rejected(self, where: Where, value: bytes) -> list[Row]:
        rejection: RejectedEvent = self._contracts.rejected_event.decode(value)
        record_id, email = self._rejected_record(rejection)
        destination = rejection.attributes.get("destination")
        truncated = rejection.attributes.get("value_truncated") == "true"
        row = RejectionRow(
            where=where,
            rejected_at=rejection.rejected_at,
            stage=rejection.stage,
            reason=rejection.reason,
            source=rejection.source,
            destination=destination,
            event_id=rejection.event_id,
            record_id=record_id,
            email=email,
            origin_topic=rejection.origin_topic,
            origin_partition=rejection.origin_partition,
            origin_offset=rejection.origin_offset,
            key=rejection.key,
            value=rejection.value,
            truncated=truncated,
        )
        timeline = TimelineRow(
            where=where,
            at=rejection.rejected_at,
            kind="rejected",
            source=rejection.source,
            record_id=record_id,
            email=email,
            event_id=rejection.event_id,
            detail={
                "stage": rejection.stage,
                "reason": rejection.reason,
                "destination": destination,
            },
        )
        counted = destination or rejection.source or ""
        return [row, timeline, Count(counted, _day(rejection.rejected_at), REJECTED)]

    def _rejected_record(self, rejection: RejectedEvent) -> tuple[str | None, str | None]:
        """The record and email a rejected message was about, when its value decodes
        as what its origin topic carries."""
        value, origin = rejection.value, rejection.origin_topic
        if value is None or rejection.attributes.get("value_truncated") == "true":
            return _record_of_key(rejection), None
        try:
            if origin in (self._topics.changes, self._topics.fullsync):
                change = self._contracts.contact_change.decode(value)
                return change.record_id, self._email_of(change)
            if origin == self._topics.profile_updates:
                update: ProfileUpdate = self._contracts.profile_update.decode(value)
                return update.record_id, _email_in(update.identities)
            if origin == self._topics.profile_changes:
                event = self._contracts.profile_changed.decode(value)
                return event.record_id, _email_in(event.identities)
        except DecodeError:
            pass
        return _record_of_key(rejection), None

    def _control(self, where: Where, value: bytes) -> list[Row]:
        control: SyncControl = self._contracts.sync_control.decode(value)
        return [
            ControlRow(
                where=where,
                source=control.source,
                sync_id=control.sync_id,
                kind=control.kind.value,
                at=control.at,
                records_total=control.records_total,
                reason=control.reason,
            )
        ]

    def _email_of(self, change: ContactChange) -> str | None:
        field = self._email_fields.get(change.source)
        return _normalised_email(change.fields.get(field)) if field else None


def _email_in(identities: tuple[Identity, ...]) -> str | None:
    return next((i.value for i in identities if i.kind == EMAIL), None)


def _normalised_email(value: FieldValue) -> str | None:
    if isinstance(value, str) and "@" in value:
        return value.strip().lower()
    return None


def _record_of_key(rejection: RejectedEvent) -> str | None:
    """A change's key is ``source:record``; other keys name no record."""
    if rejection.key is None or rejection.source is None:
        return None
    text = rejection.key.decode(errors="replace")
    prefix = f"{rejection.source}:"
    return text[len(prefix) :] if text.startswith(prefix) else None


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).date().isoformat()
