"""A chunk of changes as one write per profile, for destinations that write a record per
profile: ``fold`` (with what a CRM without a batch endpoint needs to know: created,
erased, a new email) and ``by_profile`` (the changes and folded values alone).

Each profile's changes in the chunk are folded in order, the later value of a field
winning. A profile is found in the destination by the record id of its
``crm:<source>:<id>`` identity, where ``source`` is the crmsync source that reads the
same system, else by its email. ERASED wins over everything else in the chunk: the
record is deleted, so the profile's other changes there have nothing left to change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from services.core.contracts import FieldValue
from services.core.profile_changed import ProfileChanged, ProfileChangeKind
from services.outbound.outgoing import OutgoingChange

EMAIL = "email"
CRM = "crm"


@dataclass
class ProfileWrite:
    profile_id: int
    changes: list[OutgoingChange] = field(default_factory=list)
    fields: dict[str, FieldValue] = field(default_factory=dict)
    consents: dict[str, bool] = field(default_factory=dict)
    email: str | None = None
    """The profile's email as its latest change has it."""
    record_id: str | None = None
    """The destination's record id, when the profile carries it."""
    created: bool = False
    new_email: bool = False
    """The chunk adds an email to the profile (the destination should learn it)."""
    erased: bool = False

    @property
    def has_news(self) -> bool:
        """Something for the destination: a value, a consent, a new profile or email."""
        return bool(self.fields or self.consents or self.created or self.new_email)


def record_id(event: ProfileChanged, source: str | None) -> str | None:
    """The id of the profile's record in ``source``'s system, if it has one."""
    if source is None:
        return None
    prefix = f"{source}:"
    for identity in event.identities:
        if identity.kind == CRM and identity.value.startswith(prefix):
            return identity.value[len(prefix) :]
    return None


def email_of(event: ProfileChanged) -> str | None:
    return next((i.value for i in event.identities if i.kind == EMAIL), None)


def fold(chunk: Sequence[OutgoingChange], *, source: str | None) -> list[ProfileWrite]:
    """One write per profile, in the order the profiles first appear in ``chunk``."""
    writes: dict[int, ProfileWrite] = {}
    for change in chunk:
        event = change.event
        write = writes.setdefault(event.profile_id, ProfileWrite(event.profile_id))
        write.changes.append(change)
        # The latest change knows the profile's identities best.
        write.email = email_of(event) or write.email
        write.record_id = record_id(event, source) or write.record_id
        if event.kind is ProfileChangeKind.ERASED:
            write.erased = True
        write.created = write.created or event.kind is ProfileChangeKind.CREATED
        write.new_email = write.new_email or any(i.kind == EMAIL for i in event.identities_added)
        write.fields.update(change.fields)
        write.consents.update(change.consents)
    return list(writes.values())


@dataclass
class ProfileUpdate:
    """One profile's changes of a chunk, in order, folded into one update."""

    profile_id: int
    changes: list[OutgoingChange] = field(default_factory=list)
    fields: dict[str, FieldValue] = field(default_factory=dict)
    consents: dict[str, bool] = field(default_factory=dict)

    @property
    def event(self) -> ProfileChanged:
        """The latest event: its identities are the profile's current ones."""
        return self.changes[-1].event

    def add(self, change: OutgoingChange) -> None:
        self.changes.append(change)
        self.fields.update(change.fields)
        self.consents.update(change.consents)

    def email(self) -> str | None:
        return email_of(self.event)

    def crm_id(self, source: str | None) -> str | None:
        """The profile's record id in ``source`` (its ``crm:<source>:<id>`` identity)."""
        return record_id(self.event, source)


def by_profile(changes: Iterable[OutgoingChange]) -> list[ProfileUpdate]:
    """The changes folded per profile, profiles in the order they first appear."""
    updates: dict[int, ProfileUpdate] = {}
    for change in changes:
        profile_id = change.event.profile_id
        update = updates.get(profile_id)
        if update is None:
            update = updates[profile_id] = ProfileUpdate(profile_id)
        update.add(change)
    return list(updates.values())
