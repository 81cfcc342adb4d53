"""``crmsync source|destination pause|resume NAME``: hold changes, then apply them.

Both go through ingest's admin API, which writes the pause to the barrier topic (see
services/ingest/pauses.py). While a source is paused its webhooks are still answered
and its polls still run, and what they bring is applied in order on resume; while a
destination is paused its changes wait in Kafka and are delivered in order on resume.
"""

from __future__ import annotations

from typing import Final, Literal

from services.cli.admin_client import admin_call
from services.cli.exit_codes import DONE, refused
from services.core.config import Settings

TOLD: Final = {
    ("sources", "pause"): "{name} paused ({pause_id}); its changes queue until it is resumed",
    ("sources", "resume"): "{name} resumed; its queued changes are applied in order",
    ("destinations", "pause"): "{name} paused ({pause_id}); its changes wait in Kafka",
    ("destinations", "resume"): "{name} resumed; what waited is delivered in order",
}


def pause_or_resume(
    settings: Settings,
    name: str,
    action: Literal["pause", "resume"],
    *,
    of: Literal["sources", "destinations"] = "sources",
) -> int:
    code, body = admin_call(settings, "POST", f"/{of}/{name}/{action}")
    if code != 202:
        return refused("ingest", code, body)
    print(TOLD[(of, action)].format(name=name, pause_id=body.get("pause_id", "")))
    return DONE
