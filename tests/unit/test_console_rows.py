"""What the console indexes of each topic's messages, encoded with the real contracts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.console.index import (
    INVALID,
    RECEIVED,
    ControlRow,
    Count,
    RejectionRow,
    TimelineRow,
    Where,
)
from services.console.rows import MessageRows
from services.core.codecs import load_contracts
from services.core.contracts import (
    AuditEvent,
    ContactChange,
    ControlKind,
    FieldChange,
    FieldDrop,
    Operation,
    RejectedEvent,
    SyncControl,
)
from services.core.kafka import TopicNames

pytestmark = pytest.mark.unit

CONTRACTS = load_contracts()
AT = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)


def rows() -> tuple[MessageRows, TopicNames]:
    topics = TopicNames(
        changes="p.changes",
        fullsync="p.fullsync",
        barrier="p.barrier",
        profile_updates="p.profile-updates",
        rejected="p.rejected",
        audit="p.audit",
        profile_changes="p.profile-changes",
        connector_state="p.connector-state",
        schemas="p.schemas",
        mapper_state="p.mapper-state",
    )
    return MessageRows(topics=topics, contracts=CONTRACTS, email_fields={"crm": "Email"}), topics


def change(**fields: object) -> ContactChange:
    return ContactChange(
        source="crm",
        record_id="r1",
        operation=Operation.UPSERT,
        event_id="e1",
        source_modified_at=AT,
        received_at=AT,
        fields=fields,  # type: ignore[arg-type]
    )


def test_a_change_received_is_kept_with_its_email_and_counted() -> None:
    indexed, topics = rows()
    where = Where(topics.changes, 2, 7)
    value = CONTRACTS.contact_change.encode(change(Email=" Ada@Example.COM ", Name="Ada"))
    [received, count] = indexed.of(where, value)
    assert isinstance(received, TimelineRow)
    assert (received.kind, received.record_id, received.email) == (
        "received",
        "r1",
        "ada@example.com",
    )
    assert received.detail["fields"] == {"Email": " Ada@Example.COM ", "Name": "Ada"}
    assert count == Count("crm", "2026-12-03", RECEIVED)


def test_a_decision_counts_its_invalid_drops() -> None:
    indexed, topics = rows()
    audit = AuditEvent(
        match_key="email:ada@example.com",
        source="crm",
        record_id="r1",
        event_id="e1",
        decided_at=AT,
        changes=(FieldChange("first_name", None, "Ada", "map Name"),),
        dropped=(
            FieldDrop("phone", "invalid", "phone: not a phone number"),
            FieldDrop("lifecycle", "ownership", "owned by erp"),
        ),
    )
    found = indexed.of(Where(topics.audit, 0, 1), CONTRACTS.audit_event.encode(audit))
    assert Count("crm", "2026-12-03", INVALID, 1) in found
    [decided] = [r for r in found if isinstance(r, TimelineRow)]
    assert decided.email == "ada@example.com"
    assert [d["code"] for d in decided.detail["dropped"]] == ["invalid", "ownership"]


def test_a_rejected_change_names_its_record_and_email_and_a_control_is_kept() -> None:
    indexed, topics = rows()
    rejected = RejectedEvent(
        stage="mapper",
        reason="phone: not a phone number",
        rejected_at=AT,
        source="crm",
        key=b"crm:r1",
        value=CONTRACTS.contact_change.encode(change(Email="bo@example.com")),
        origin_topic=topics.changes,
        origin_partition=1,
        origin_offset=5,
    )
    found = indexed.of(Where(topics.rejected, 0, 3), CONTRACTS.rejected_event.encode(rejected))
    [row] = [r for r in found if isinstance(r, RejectionRow)]
    assert (row.record_id, row.email, row.origin_offset) == ("r1", "bo@example.com", 5)
    undecodable = RejectedEvent(
        stage="ingest", reason="not JSON", rejected_at=AT, source="crm", key=b"crm:r9", value=b"{"
    )
    found = indexed.of(Where(topics.rejected, 0, 4), CONTRACTS.rejected_event.encode(undecodable))
    [row] = [r for r in found if isinstance(r, RejectionRow)]
    assert (row.record_id, row.email) == ("r9", None)

    control = SyncControl(source="crm", sync_id="s1", kind=ControlKind.COMPLETED, at=AT)
    [kept] = indexed.of(Where(topics.barrier, 0, 0), CONTRACTS.sync_control.encode(control))
    assert isinstance(kept, ControlRow) and kept.kind == "COMPLETED"
    assert indexed.of(Where(topics.barrier, 0, 1), None) == []
