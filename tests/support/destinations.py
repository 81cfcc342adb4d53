"""Driving an outbound destination the way the delivery loop does, without the loop.

A destination's unit tests give it profile changes and look at what its vendor's fake
holds afterwards. Between the two stand the same steps for every kind: the change as the
mapper publishes it, shaped for the destination's settings (``outgoing``), and a chunk
sent inside an event loop that opens the destination first and closes it after, as the
delivery loop does. These helpers are those steps, so that a test says only what is
particular to its vendor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final, TypedDict

from services.core.contracts import FieldValue, Identity
from services.core.destinations import DestinationCommon, DestinationSettings
from services.core.profile_changed import (
    AttributeChange,
    ConsentStatusChange,
    ProfileChanged,
    ProfileChangeKind,
)
from services.outbound.destinations import open_destination
from services.outbound.destinations.base import Delivered, Destination
from services.outbound.outgoing import OutgoingChange, outgoing

NOW: Final = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)

Attributes = Mapping[str, tuple[FieldValue, FieldValue]]
"""An attribute's name -> (its value before, its value after)."""


def profile_changed(
    profile_id: int,
    *,
    event: str = "e1",
    email: str | None = None,
    crm: Sequence[str] = (),
    attributes: Attributes | None = None,
    consents: Mapping[str, str] | None = None,
    kind: ProfileChangeKind = ProfileChangeKind.UPDATED,
    source: str = "hubspot",
) -> ProfileChanged:
    """A change of one profile as the mapper publishes it, with only what a destination
    looks at given: the ``crm`` identities (``<source>:<id>``, in order) by which it
    finds its record, then the ``email``; the attributes that changed; the email
    consents, by subscription, at their new status. ``event`` names the source event,
    so that two changes of a profile in a chunk are told apart and a resent chunk is
    the same one."""
    identities = [Identity("crm", value) for value in crm]
    if email is not None:
        identities.append(Identity("email", email))
    return ProfileChanged(
        event_id=f"{event}:{profile_id}",
        profile_id=profile_id,
        kind=kind,
        committed_at=NOW,
        source=source,
        record_id=str(profile_id),
        source_event_id=event,
        source_modified_at=NOW,
        mapping_version=1,
        identities=tuple(identities),
        attributes=tuple(
            AttributeChange(name, old, new) for name, (old, new) in (attributes or {}).items()
        ),
        consents=tuple(
            ConsentStatusChange(subscription, "email", None, status, NOW)
            for subscription, status in (consents or {}).items()
        ),
    )


def linked(source: str, record_id: object | None) -> tuple[str, ...]:
    """The ``crm`` identity by which a profile is linked to its record in ``source``,
    when a test gives it one: a profile that carries it is found by it, else by email."""
    return () if record_id is None else (f"{source}:{record_id}",)


class Changed(TypedDict, total=False):
    """What a vendor's wrapper of ``profile_changed`` passes through unchanged (the
    wrapper adds the identities its vendor finds records by)."""

    event: str
    email: str | None
    attributes: Attributes | None
    consents: Mapping[str, str] | None
    kind: ProfileChangeKind


class FromHubSpot(TypedDict, total=False):
    """What a vendor's wrapper of ``from_hubspot`` passes through unchanged."""

    event: str
    kind: ProfileChangeKind
    newsletter: str | None


def from_hubspot(
    profile_id: int,
    email: str | None,
    attributes: Attributes | None = None,
    *,
    event: str = "e1",
    kind: ProfileChangeKind = ProfileChangeKind.UPDATED,
    newsletter: str | None = None,
    consents: Mapping[str, str] | None = None,
    crm: Sequence[str] = (),
) -> ProfileChanged:
    """A change of a profile read from HubSpot (its contact id: the profile id), the
    change most destination tests send: another system's, so it is never an echo. By
    its email, what changed and, as ``newsletter``, the status of its newsletter
    subscription; ``crm``: the destination's own ids the profile carries as well."""
    if newsletter is not None:
        consents = {"newsletter": newsletter, **(consents or {})}
    return profile_changed(
        profile_id,
        event=event,
        email=email,
        crm=(f"hubspot:{profile_id}", *crm),
        attributes=attributes,
        consents=consents,
        kind=kind,
    )


def shaped(events: Sequence[ProfileChanged], settings: DestinationCommon) -> list[OutgoingChange]:
    """``events`` as the destination with ``settings`` takes them. Each must be one it
    takes: a test that meant to send a change and silently sent nothing would pass
    for the wrong reason, so a skipped event fails here, naming why it was skipped."""
    chunk = []
    for event in events:
        change = outgoing(event, settings)
        assert isinstance(change, OutgoingChange), f"{event.event_id} skipped: {change}"
        chunk.append(change)
    return chunk


def send_each(
    destination: Destination,
    chunks: Sequence[Sequence[OutgoingChange]],
    *,
    between: Callable[[], None] | None = None,
) -> list[Delivered]:
    """Each chunk sent in turn by one opened ``destination``, in one event loop (its
    connections belong to the loop that opened it), closed after even when a send
    raises. ``between`` runs before every chunk but the first: the vendor's fake can
    change under the open destination there (an expired session)."""

    async def run() -> list[Delivered]:
        await destination.open()
        try:
            found = []
            for index, chunk in enumerate(chunks):
                if index and between is not None:
                    between()
                found.append(await destination.send(chunk))
            return found
        finally:
            await destination.close()

    return asyncio.run(run())


def send(destination: Destination, chunk: Sequence[OutgoingChange], *, times: int = 1) -> Delivered:
    """``chunk`` sent ``times`` times by one opened ``destination``; what the last send
    delivered. Sending again is what the delivery loop does after a crash or an
    outage, so the second send shows what a resent chunk does."""
    if times < 1:
        raise ValueError("a chunk is sent at least once")
    return send_each(destination, [chunk] * times)[-1]


def deliver(
    settings: DestinationSettings, events: Sequence[ProfileChanged], *, times: int = 1
) -> Delivered:
    """``events`` shaped for ``settings`` and sent ``times`` times by the destination
    the outbound service opens for them (so the kind's wiring is tested too)."""
    return send(open_destination(settings.kind, settings), shaped(events, settings), times=times)
