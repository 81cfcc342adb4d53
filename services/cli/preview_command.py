"""``crmsync destination preview NAME --limit N``: per profile, the requests a push
would send the destination, without sending them.

The first ``limit`` profiles of the store (or those ``--email`` names) are shaped for
the destination as a push shapes them (services/writer/stores/snapshots.py,
services/outbound/outgoing.py) and handed to the destination one at a time inside a
dry run (services/outbound/dry_run.py): its requests are recorded, secrets masked,
and printed. A profile the destination would skip says why.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

from services.cli.destination_command import named_destination
from services.core.config import Settings
from services.core.contracts import Identity
from services.core.destinations import DestinationSettings
from services.outbound.destinations import open_destination
from services.outbound.dry_run import RecordedRequest, recording
from services.outbound.outgoing import OutgoingChange, outgoing
from services.writer.stores import open_sql_store
from services.writer.stores.base import StoredProfile
from services.writer.stores.snapshots import snapshot_event

PREVIEW_RUN = "preview"
"""The run a dry run's snapshots name: none is queued."""


def preview(settings: Settings, name: str, *, limit: int, email: str | None) -> int:
    destination = named_destination(settings, name)
    if destination is None:
        return 1
    store = open_sql_store(settings.store, read_only=True)
    if store is None:
        sys.stderr.write(f"the {settings.store.kind} store cannot be previewed from\n")
        return 2
    try:
        if email is not None:
            found = store.find_profile(Identity("email", email.strip().lower()))
            profiles = [found] if found is not None else []
        else:
            profiles = store.profiles_after(0, limit)
    finally:
        store.close()
    if not profiles:
        print("no profile to preview")
        return 1
    now = datetime.now(UTC)
    for profile in profiles:
        print(_shown(name, destination, profile, now))
    return 0


def _shown(
    name: str, destination: DestinationSettings, profile: StoredProfile, now: datetime
) -> str:
    event = snapshot_event(profile, destination=name, run_id=PREVIEW_RUN, now=now)
    shaped = outgoing(event, destination, destination=name)
    heading = f"== profile {profile.profile_id}"
    if isinstance(shaped, str):
        return f"{heading}: skipped ({shaped})"
    requests, stopped = asyncio.run(_dry_run(name, destination, shaped))
    lines = [heading]
    for request in requests:
        lines.append(f"{request.method} {request.url}")
        lines += [f"{header}: {value}" for header, value in sorted(request.headers.items())]
        if request.body:
            lines.append(request.body)
    if not requests:
        lines.append("(no request: nothing this destination takes)")
    if stopped is not None:
        lines.append(f"(the dry run's empty answer ends it: {stopped})")
    return "\n".join(lines)


async def _dry_run(
    name: str, settings: DestinationSettings, change: OutgoingChange
) -> tuple[list[RecordedRequest], str | None]:
    with recording() as recorder:
        destination = open_destination(name, settings)
        await destination.open()
        try:
            delivered = await destination.send([change])
            stopped = f"refused: {delivered.refused[0].answer}" if delivered.refused else None
        except Exception as exc:  # the dry answer was not what the vendor would say
            stopped = f"{type(exc).__name__}: {exc}"
        finally:
            await destination.close()
    return recorder.requests, stopped
