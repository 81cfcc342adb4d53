"""``crmsync source test SOURCE [--limit N] [--json]``: a test sync (dry run) of a
source: per record, what the mapper would decide, what would change in the store and
what each destination would be sent, with nothing written (services/console/
test_sync.py).

Where the records come from:

- a source with an API: the CLI runs the test itself, pulling the first page(s) of a
  full sync from the CRM with the config's credentials; when this shell lacks them
  (their environment variables are the services'), it asks the console as below;
- a webhook-only source: only the console keeps the changes it received, so the CLI
  asks the console's API (``GET /api/sources/SOURCE/test?limit=N``), which tests the
  last N changes the source sent and answers with the same report.

The text shows per record the fields old -> new, the values dropped and why, a
rejection's reason, and each destination's outcome; ``--json`` prints the report as
the console's API serves it.

Exit codes (services/cli/exit_codes.py): 0 when the report holds at least one
record, whatever the records' outcomes (a rejection is a finding, not a failure); 1
when the source is unknown or there was nothing to test (the notes say why: a CRM
that failed, a webhook-only source that sent nothing yet); 2 for a ``--limit`` out of
range; 3 when the console, asked for a webhook-only source, did not answer.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from typing import Any, Final

from services.cli.console_client import console_call
from services.cli.exit_codes import DONE, FAILED, USAGE, refused
from services.cli.json_output import print_json
from services.console.test_sync import MAX_RECORDS, UnknownSource, pulls_from_api, run_test_sync
from services.console.test_sync_report import report_json
from services.core.config import Settings
from services.core.settings_base import MissingSecretError

BLANK: Final = "(blank)"
SHOWN_VERDICTS: Final = {
    "new": "new",
    "changed": "changed",
    "cleared": "cleared",
    "unchanged": "unchanged",
    "kept": "kept",
    "writer_decides": "writer decides",
}
SOURCES_TOLD: Final = {
    "api": "the first page(s) of a full sync from the CRM's API",
    "given": "the last changes the source sent",
    "none": "no records",
}


def run_source_test(settings: Settings, source: str, *, limit: int, as_json: bool) -> int:
    if not 1 <= limit <= MAX_RECORDS:
        sys.stderr.write(f"--limit is 1 to {MAX_RECORDS}\n")
        return USAGE
    try:
        local = pulls_from_api(settings, source)
    except UnknownSource:
        known = ", ".join(sorted(settings.sources)) or "none"
        sys.stderr.write(f"no source named {source!r} (configured: {known})\n")
        return FAILED
    report: dict[str, Any] | None = None
    if local:
        try:
            report = report_json(asyncio.run(run_test_sync(settings, source, limit=limit)))
        except MissingSecretError as exc:
            sys.stderr.write(f"{exc} here: asking the console to run the test sync\n")
    if report is None:
        code, report = console_call(
            settings, "GET", f"/sources/{source}/test", query={"limit": limit}
        )
        if code != 200:
            return refused("console", code, report)
    if as_json:
        print_json(report)
    else:
        print(rendered(report))
    return DONE if report["records"] else FAILED


def rendered(report: Mapping[str, Any]) -> str:
    """The report (its JSON form) as text for a shell."""
    told = SOURCES_TOLD.get(report["records_from"], report["records_from"])
    lines = [
        f"Test sync of {report['source']} ({report['kind']}): {len(report['records'])} "
        f"record(s) from {told}; nothing was written."
    ]
    lines += [f"note: {note}" for note in report["notes"]]
    for record in report["records"]:
        lines.append("")
        lines += _record_lines(record)
    return "\n".join(lines)


def _record_lines(record: Mapping[str, Any]) -> list[str]:
    heading = f"== record {record['record_id']} ({record['operation']})"
    if record["verdict"] == "rejected":
        return [f"{heading}: rejected by the {record['rejected_by']}: {record['reason']}"]
    store = record["store"]
    if record["verdict"] == "no_update":
        outcome = "no update"
    elif store is None:
        outcome = "update (the store was not read)"
    elif store["profile_id"] is None:
        outcome = "new profile"
    else:
        outcome = f"profile {store['profile_id']}"
    lines = [f"{heading}: {outcome}"]
    if record["identities"]:
        lines.append(f"  identities: {', '.join(record['identities'])}")
    if store is not None:
        if store["note"]:
            lines.append(f"  {store['note']}")
        lines += [_attribute_line(a) for a in store["attributes"]]
        lines += [_consent_line(c) for c in store["consents"]]
    lines += [f"  dropped {d['attribute']} ({d['code']}): {d['reason']}" for d in record["drops"]]
    if record["destinations"]:
        lines.append("  destinations:")
        lines += [_destination_line(d) for d in record["destinations"]]
    return lines


def _attribute_line(attribute: Mapping[str, Any]) -> str:
    change = f"{_shown(attribute['old'])} -> {_shown(attribute['new'])}"
    return f"  {attribute['attribute']}: {change}  [{_verdict(attribute)}]"


def _consent_line(consent: Mapping[str, Any]) -> str:
    change = f"{consent['old'] or BLANK} -> {consent['new']}"
    where = f"{consent['subscription']}/{consent['channel'].lower()}"
    return f"  consent {where}: {change}  [{_verdict(consent)}]"


def _verdict(outcome: Mapping[str, Any]) -> str:
    verdict = SHOWN_VERDICTS.get(outcome["verdict"], outcome["verdict"])
    return f"{verdict}: {outcome['why']}" if outcome.get("why") else verdict


def _destination_line(destination: Mapping[str, Any]) -> str:
    name, verdict = destination["destination"], destination["verdict"]
    if verdict != "would_send":
        return f"    {name}: {verdict.replace('_', ' ')} ({destination['reason']})"
    sent = [f"{field}={_shown(value)}" for field, value in destination["fields"].items()]
    sent += [f"{field}={value}" for field, value in destination["consents"].items()]
    paused = " (paused: it waits until unpaused)" if destination["paused"] else ""
    return f"    {name}: would send {', '.join(sent) or 'the profile'}{paused}"


def _shown(value: Any) -> str:
    return BLANK if value is None else json.dumps(value, ensure_ascii=False)
