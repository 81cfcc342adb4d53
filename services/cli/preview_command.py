"""``crmsync destination preview NAME --limit N``: per profile, the requests a push
would send the destination, without sending them.

The first ``limit`` profiles of the store (or those ``--email`` names) are shaped for
the destination as a push shapes them (services/writer/stores/snapshots.py,
services/outbound/outgoing.py) and handed to the destination one at a time inside a
dry run (services/outbound/dry_run.py): its requests are recorded, secrets masked,
and printed. A profile the destination would skip says why. ``previewed`` gathers one
profile's preview; ``shown`` writes it for people, ``preview_json`` for ``--json``
(a list, one object per profile).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from services.cli.destination_command import named_destination
from services.cli.exit_codes import DONE, FAILED, USAGE
from services.cli.json_output import print_json
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


@dataclass(frozen=True)
class ProfilePreview:
    profile_id: int
    skipped: str | None
    """Why the destination takes nothing of this profile; None when it takes some."""
    requests: tuple[RecordedRequest, ...]
    stopped: str | None
    """Why the dry run ended early (its empty answer was not one the vendor gives)."""


def preview(
    settings: Settings, name: str, *, limit: int, email: str | None, as_json: bool = False
) -> int:
    destination = named_destination(settings, name)
    if destination is None:
        return FAILED
    store = open_sql_store(settings.store, read_only=True)
    if store is None:
        sys.stderr.write(f"the {settings.store.kind} store cannot be previewed from\n")
        return USAGE
    try:
        if email is not None:
            found = store.find_profile(Identity("email", email.strip().lower()))
            profiles = [found] if found is not None else []
        else:
            profiles = store.profiles_after(0, limit)
    finally:
        store.close()
    now = datetime.now(UTC)
    if as_json:
        print_json([preview_json(previewed(name, destination, p, now)) for p in profiles])
    elif not profiles:
        print("no profile to preview")
    else:
        for profile in profiles:
            print(shown(previewed(name, destination, profile, now)))
    return DONE if profiles else FAILED


def previewed(
    name: str, destination: DestinationSettings, profile: StoredProfile, now: datetime
) -> ProfilePreview:
    event = snapshot_event(profile, destination=name, run_id=PREVIEW_RUN, now=now)
    shaped = outgoing(event, destination, destination=name)
    if isinstance(shaped, str):
        return ProfilePreview(profile.profile_id, skipped=shaped, requests=(), stopped=None)
    requests, stopped = asyncio.run(_dry_run(name, destination, shaped))
    return ProfilePreview(
        profile.profile_id, skipped=None, requests=tuple(requests), stopped=stopped
    )


def shown(preview: ProfilePreview) -> str:
    heading = f"== profile {preview.profile_id}"
    if preview.skipped is not None:
        return f"{heading}: skipped ({preview.skipped})"
    lines = [heading]
    for request in preview.requests:
        lines.append(f"{request.method} {request.url}")
        lines += [f"{header}: {value}" for header, value in sorted(request.headers.items())]
        if request.body:
            lines.append(request.body)
    if not preview.requests:
        lines.append("(no request: nothing this destination takes)")
    if preview.stopped is not None:
        lines.append(f"(the dry run's empty answer ends it: {preview.stopped})")
    return "\n".join(lines)


def preview_json(preview: ProfilePreview) -> dict[str, Any]:
    """The requests as recorded: headers and bodies already masked where secret."""
    return {
        "profile_id": preview.profile_id,
        "skipped": preview.skipped,
        "requests": [
            {
                "method": request.method,
                "url": request.url,
                "headers": dict(sorted(request.headers.items())),
                "body": request.body or None,
            }
            for request in preview.requests
        ],
        "stopped": preview.stopped,
    }


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
