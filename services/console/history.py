"""A profile's history from the console's index: every identity and attribute change,
with the source and record that made it and the rule that decided it.

The writer's profile changes give what changed (old and new values, identities added
and removed, merges); the mapper's decision for the same change gives the mapping
rule that made each attribute; the profile settings give the conflict policy that let
the write stand. A profile's history includes that of the profiles merged into it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol


class Row(Protocol):
    """A timeline row of the console's index (an sqlite3.Row)."""

    def __getitem__(self, key: str) -> Any: ...


def merged_into(profile_id: int, rows_of: Callable[[list[int]], Sequence[Row]]) -> list[int]:
    """``profile_id`` and every profile merged into it, and into those, as the index
    knows them (``rows_of`` gives the timeline rows of some profiles)."""
    found = [profile_id]
    asked = 0
    while asked < len(found):
        batch = found[asked:]
        asked = len(found)
        for row in rows_of(batch):
            if row["kind"] != "written":
                continue
            for merged in json.loads(row["detail"]).get("merged_profile_ids", []):
                if merged not in found:
                    found.append(int(merged))
    return found


def history(
    rows: Iterable[Row], decisions: Mapping[str, Row], policy_of: Callable[[str], str]
) -> list[dict[str, Any]]:
    """One entry per identity or attribute change, oldest first. ``decisions`` are the
    mapper's decided rows by event id; ``policy_of`` names an attribute's conflict
    policy."""
    entries: list[dict[str, Any]] = []
    for row in rows:
        if row["kind"] != "written":
            continue
        detail = json.loads(row["detail"])
        base = {
            "at": row["at"],
            "profile_id": row["profile_id"],
            "source": row["source"],
            "record_id": row["record_id"],
            "event_id": row["event_id"],
            "change": detail.get("change"),
        }
        merged = detail.get("merged_profile_ids", [])
        split = row["source"] == "split"
        for identity in detail.get("identities_added", []):
            entries.append(
                {
                    **base,
                    "what": "identity added",
                    "identity": identity,
                    "rule": _added_because(identity, row, merged, split),
                }
            )
        for identity in detail.get("identities_removed", []):
            entries.append(
                {
                    **base,
                    "what": "identity removed",
                    "identity": identity,
                    "rule": _removed_because(identity, row, detail, split),
                }
            )
        rules = _mapping_rules(decisions.get(row["event_id"] or ""))
        for change in detail.get("attributes", []):
            name = change["name"]
            mapped = rules.get(name)
            if merged:
                brought = f"merge of profile {', '.join(map(str, merged))}"
                policy = policy_of(name)
                rule = f"{mapped}; {policy}; {brought}" if mapped else f"{brought} ({policy})"
            elif split:
                rule = "split: each profile keeps its own records' newest value"
            else:
                rule = f"{mapped}; {policy_of(name)}" if mapped else policy_of(name)
            entries.append(
                {
                    **base,
                    "what": "attribute",
                    "name": name,
                    "old": change["old"],
                    "new": change["new"],
                    "rule": rule,
                }
            )
    return entries


def _mapping_rules(decided: Row | None) -> dict[str, str]:
    if decided is None:
        return {}
    return {c["field"]: c["rule"] for c in json.loads(decided["detail"]).get("changes", [])}


def _added_because(identity: str, row: Row, merged: list[int], split: bool) -> str:
    if split:
        return f"split off profile {row['record_id']}: its records assert it"
    if merged:
        return f"merge of profile {', '.join(map(str, merged))}, or asserted by the change"
    return f"asserted by {row['source']} record {row['record_id']}"


def _removed_because(identity: str, row: Row, detail: Mapping[str, Any], split: bool) -> str:
    if split:
        return f"split: profile {row['record_id']} took it back"
    if identity.startswith("crm:") and detail.get("change") == "DETACHED":
        return "its record was deleted or stopped matching"
    return f"retired: {row['source']} record {row['record_id']} no longer asserts it"
