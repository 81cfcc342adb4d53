"""The ids a destination gives the profiles crmsync creates there, linked back.

When crmsync creates a contact in a CRM (a HubSpot batch upsert that found no contact
with the email), the CRM gives it an id of its own. That CRM's later webhooks and
polls name the contact only by that id; without a link they would make a second
profile. So the delivery loop turns each assigned id into a ``ContactChange`` from the
destination's ``source`` (record id: the assigned id; origin ``WRITE_BACK``) carrying
the profile's email under the source's email field, onto the changes topic: the
mapper and writer resolve it by the email to the same profile, which gains the
identity ``crm:<source>:<id>``.

It changes no attribute (the email is the profile's own), so the ``ProfileChanged``
it makes carries the new identity only, from the destination's own source: never
sent back to that destination, sent to the others that take identities.
"""

from __future__ import annotations

from datetime import datetime

from services.core.contracts import ContactChange, Identity, Operation, Origin
from services.core.profile_changed import ProfileChanged

EMAIL = "email"
CRM = "crm"


def link_change(
    event: ProfileChanged,
    record_id: str,
    *,
    source: str,
    email_field: str,
    destination: str,
    now: datetime,
) -> ContactChange | None:
    """The change that links ``record_id`` in ``source`` to the profile of ``event``;
    None when the profile has it already, or has no email to be found by."""
    if Identity(CRM, f"{source}:{record_id}") in event.identities:
        return None
    email = next((i.value for i in event.identities if i.kind == EMAIL), None)
    if email is None:
        return None
    return ContactChange(
        source=source,
        record_id=record_id,
        operation=Operation.UPSERT,
        event_id=f"writeback:{destination}:{event.event_id}",
        source_modified_at=event.committed_at,
        received_at=now,
        fields={email_field: email},
        origin=Origin.WRITE_BACK,
    )
