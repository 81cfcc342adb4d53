"""A chunk of changes as one write per profile, for destinations that write a record per
profile: ``fold`` (with what a CRM without a batch endpoint needs to know: created,
erased, a new email) and ``write_each`` (such writes one by one, each profile's fate
its own), ``fold_records`` (for a CRM that takes the writes in batches of records:
only what is sent) and ``by_profile`` (the changes and folded values alone).

Each profile's changes in the chunk are folded in order, the later value of a field
winning. A profile is found in the destination by the record id of its
``crm:<source>:<id>`` identity, where ``source`` is the crmsync source that reads the
same system, else by its email. ERASED wins over everything else in the chunk: the
record is deleted, so the profile's other changes there have nothing left to change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from services.core.api_client import ApiError, ApiUnavailable
from services.core.contracts import FieldValue
from services.core.profile_changed import ProfileChanged, ProfileChangeKind
from services.outbound.destinations.base import Delivered, Refusal, refusals
from services.outbound.outgoing import OutgoingChange

T = TypeVar("T")

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


class Unsendable(Exception):
    """A profile crmsync cannot write to the destination at all (the reason says why)."""


async def side_by_side(
    items: Iterable[T], work: Callable[[T], Awaitable[None]], *, limit: int
) -> None:
    """``work`` on every item, at most ``limit`` at once: the items are a chunk's
    profiles, each once, so their order among themselves does not matter. Every one
    finishes before the first failure is raised: a write in flight is never abandoned
    halfway, so a chunk sent again finds what it made."""
    semaphore = asyncio.Semaphore(limit)

    async def one(item: T) -> None:
        async with semaphore:
            await work(item)

    outcomes = await asyncio.gather(*(one(item) for item in items), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def write_each(
    chunk: Sequence[OutgoingChange],
    *,
    source: str | None,
    write: Callable[[ProfileWrite], Awaitable[str | None]],
    limit: int,
) -> Delivered:
    """Each profile's write (``fold``) made on its own by ``write``, which gives the
    record id the profile has once written (None: nothing was). A profile the
    destination refuses (``ApiError``) or crmsync cannot send (``Unsendable``) is
    refused alone; one the destination does not take (``ApiUnavailable``) stops the
    chunk, which the loop sends again: the writes already made find their records."""
    delivered = Delivered()

    async def one(profile: ProfileWrite) -> None:
        try:
            found = await write(profile)
        except ApiUnavailable:
            raise
        except ApiError as exc:
            delivered.refused += refusals(exc, profile.changes)
            return
        except Unsendable as exc:
            delivered.refused += [Refusal(c, None, str(exc)) for c in profile.changes]
            return
        if found is not None:
            delivered.assigned[profile.profile_id] = found

    await side_by_side(fold(chunk, source=source), one, limit=limit)
    return delivered


@dataclass
class RecordWrite:
    """One profile's write in a chunk sent as batches of records: which record, what
    it carries, and the changes whose fate it decides."""

    profile_id: int
    record_id: str | None = None
    email: str | None = None
    values: dict[str, FieldValue] = field(default_factory=dict)
    """The destination's field -> the value to write (a consent: opted in)."""
    changes: list[OutgoingChange] = field(default_factory=list)
    erase: bool = False


def fold_records(
    chunk: Sequence[OutgoingChange], *, source: str | None, send_clears: bool
) -> list[RecordWrite]:
    """The chunk as one write per profile, in order, later values winning. Only a
    change with something to write takes part in its profile's fate (a clear only with
    ``send_clears``); an erasure ends the profile: its other changes in the chunk share
    the erasure's fate."""
    records: dict[int, RecordWrite] = {}
    for change in chunk:
        event = change.event
        record = records.setdefault(event.profile_id, RecordWrite(event.profile_id))
        record.record_id = record_id(event, source) or record.record_id
        record.email = email_of(event) or record.email
        if event.kind is ProfileChangeKind.ERASED or record.erase:
            record.erase = True
            record.values.clear()
            record.changes.append(change)
            continue
        written: dict[str, FieldValue] = {
            name: value for name, value in change.fields.items() if value is not None or send_clears
        }
        written.update(change.consents)
        if written:
            record.values.update(written)
            record.changes.append(change)
    return list(records.values())


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in order, ``size`` at a time (a vendor's limit on one request)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
