"""``crmsync source pause|resume NAME``: hold a source's changes, then apply them.

Both go through ingest's admin API, which writes the pause to the barrier topic (see
services/ingest/pauses.py): while paused, the source's webhooks are still answered
and its polls still run, and what they bring is applied in order on resume.
"""

from __future__ import annotations

import sys
from typing import Final, Literal

from services.cli.admin_client import admin_call
from services.core.config import Settings

TOLD: Final = {
    "pause": "{source} paused ({pause_id}); its changes queue until it is resumed",
    "resume": "{source} resumed; its queued changes are applied in order",
}


def pause_or_resume(settings: Settings, source: str, action: Literal["pause", "resume"]) -> int:
    code, body = admin_call(settings, "POST", f"/sources/{source}/{action}")
    if code != 202:
        sys.stderr.write(f"ingest answered {code}: {body.get('error', body)}\n")
        return 1
    print(TOLD[action].format(source=source, pause_id=body.get("pause_id", "")))
    return 0
