"""``crmsync fullsync start|status|cancel SOURCE``: full syncs, run by ingest.

Each is one call to ingest's admin API (services/ingest/admin.py); ``start --wait``
then asks for the sync's progress each second until it ends, showing it as a bar on a
terminal or as one line per second elsewhere, and exits 0 only if it COMPLETED.
``--json`` prints the admin API's view of the sync (the last one seen, with ``--wait``).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Final

from services.cli.admin_client import admin_call
from services.cli.exit_codes import DONE, FAILED, refused
from services.cli.json_output import print_json
from services.cli.progress import progress_for
from services.core.config import Settings

POLL_S: Final = 1.0


def start(settings: Settings, source: str, *, wait: bool, as_json: bool) -> int:
    code, body = admin_call(settings, "POST", f"/fullsync/{source}")
    if code != 202:
        return refused("ingest", code, body)
    if not wait:
        if as_json:
            print_json(body)
        else:
            print(f"started {body['sync_id']}")
        return DONE
    print(f"started {body['sync_id']}", file=sys.stderr if as_json else sys.stdout)
    return _follow(settings, source, as_json=as_json)


def _follow(settings: Settings, source: str, *, as_json: bool) -> int:
    notes = sys.stderr if as_json else sys.stdout
    with progress_for(unit="records", label=source, notes=notes) as progress:
        while True:
            time.sleep(POLL_S)
            code, body = admin_call(settings, "GET", f"/fullsync/{source}")
            if code != 200:
                return refused("ingest", code, body)
            line = progress_line(body)
            progress.step(
                done=body["records_done"],
                total=body["records_total"],
                line=line,
                note=f"{body['records_rejected']} rejected",
            )
            if body["status"] != "RUNNING":
                progress.end(line)
                break
    if as_json:
        print_json(body)
    return DONE if body["status"] == "COMPLETED" else FAILED


def status(settings: Settings, source: str) -> int:
    """The sync as JSON, as it always printed (``--json`` changes nothing)."""
    code, body = admin_call(settings, "GET", f"/fullsync/{source}")
    if code != 200:
        return refused("ingest", code, body)
    print_json(body)
    return DONE


def cancel(settings: Settings, source: str) -> int:
    code, body = admin_call(settings, "DELETE", f"/fullsync/{source}")
    if code != 202:
        return refused("ingest", code, body)
    print(f"{body['sync_id']}: {body['status']}")
    return DONE


def progress_line(sync: dict[str, Any]) -> str:
    total = f"/{sync['records_total']}" if sync["records_total"] is not None else ""
    rate = f", {sync['rate_per_s']}/s" if sync["rate_per_s"] else ""
    eta = f", ETA {sync['eta_seconds']}s" if sync["eta_seconds"] is not None else ""
    reason = f" ({sync['reason']})" if sync["reason"] else ""
    return f"{sync['sync_id']} {sync['status']} {sync['records_done']}{total}{rate}{eta}{reason}"
