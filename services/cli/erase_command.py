"""``crmsync profile erase``: the right to erasure, as a change the writer applies.

The command puts an ERASE ProfileUpdate for the identity on the profile-updates
topic, keyed like every update of that identity, and waits for the broker to
acknowledge it. The writer then removes the profile's personal data and keeps
tombstones (hashes of its identities) so no late event brings it back; an event
newer than the erasure (a fresh sign-up) starts a new profile.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from services.core.admin_updates import admin_update, send_update
from services.core.config import Settings
from services.core.contracts import Identity, UpdateOperation

ERASURE_SOURCE: Final = "erasure"


def erase(settings: Settings, identity: Identity, *, requested_at: datetime | None = None) -> str:
    """Send the erasure of ``identity``'s profile; returns the erasure's event id."""
    update = admin_update(
        UpdateOperation.ERASE,
        source=ERASURE_SOURCE,
        record_id="",
        match_key=f"{identity.kind}:{identity.value}",
        identities=(identity,),
        prefix="erase",
        at=requested_at,
    )
    send_update(settings, update, what="erasure")
    return update.event_id
