"""The README's identity story end to end: a contact changes email, then a stranger
turns up with the old one (webhooks -> mapper -> writer -> store -> CLI)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.polling import wait_for
from tests.support.services import Stack
from tests.support.store import query
from tests.support.webhooks import post_webhook

pytestmark = pytest.mark.integration

T1, T2, T3 = "2026-12-01T09:00:00Z", "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"


def _with_other_source(stack: Stack, **profile: Any) -> None:
    stack.config["sources"]["other"] = json.loads(json.dumps(stack.config["sources"]["demo"]))
    if profile:
        stack.config["profile"] = profile
    stack.write_config()
    stack.start()


def _post(stack: Stack, body: dict[str, Any], *, source: str = "demo") -> None:
    status, _headers, answer = post_webhook(stack["ingest"].url, body, source=source)
    assert status == 200, answer


def _email_stored(stack: Stack, email: str) -> bool:
    rows = query(
        stack.db_path, "SELECT 1 FROM identities WHERE kind = 'email' AND value = ?", email
    )
    return bool(rows)


def _record_has(stack: Stack, record: str, name: str, value: str) -> bool:
    rows = query(
        stack.db_path,
        "SELECT a.value FROM identities i JOIN attributes a ON a.profile_id = i.profile_id "
        "WHERE i.kind = 'crm' AND i.value = ? AND a.name = ?",
        record,
        name,
    )
    return bool(rows) and json.loads(str(rows[0][0])) == value


def _profile(stack: Stack, email: str) -> dict[str, Any]:
    result = stack.cli("profile", "get", "--email", email)
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def _steps_1_and_2(stack: Stack) -> None:
    _post(stack, {"id": "m1", "updated_at": T1, "email": "old@x.io", "first_name": "Mo"})
    assert wait_for(lambda: _email_stored(stack, "old@x.io"))
    _post(stack, {"id": "m1", "updated_at": T2, "email": "new@x.io"})
    assert wait_for(lambda: _email_stored(stack, "new@x.io"))


def _step_4(stack: Stack) -> None:
    someone = {"id": "o1", "updated_at": T3, "email": "old@x.io", "first_name": "Someone"}
    _post(stack, someone, source="other")
    assert wait_for(lambda: _record_has(stack, "other:o1", "first_name", "Someone"))


def test_an_old_email_stops_matching_and_a_stranger_with_it_gets_a_profile_of_their_own(
    stack: Stack,
) -> None:
    _with_other_source(stack)
    _steps_1_and_2(stack)
    # Step 3: the old email finds nobody; the CLI says why.
    lookup = stack.cli("profile", "get", "--email", "old@x.io")
    assert lookup.returncode == 1
    mo = _profile(stack, "new@x.io")
    assert f"retired on profile {mo['profile_id']}" in lookup.stderr
    assert "demo record m1" in lookup.stderr
    assert {"kind": "email", "value": "new@x.io"} in mo["identities"]
    assert {"kind": "email", "value": "old@x.io"} not in mo["identities"]
    assert [(r["kind"], r["value"], r["record_id"]) for r in mo["retired_identities"]] == [
        ("email", "old@x.io", "m1")
    ]
    assert mo["attributes"]["first_name"]["value"] == "Mo"
    # Step 4: the stranger gets a profile of their own; Mo keeps "Mo".
    _step_4(stack)
    someone = _profile(stack, "old@x.io")
    assert someone["profile_id"] != mo["profile_id"]
    assert someone["attributes"]["first_name"]["value"] == "Someone"
    assert _profile(stack, "new@x.io")["attributes"]["first_name"]["value"] == "Mo"


def test_keep_matching_keeps_the_old_email_on_the_profile_and_the_stranger_joins_it(
    stack: Stack,
) -> None:
    _with_other_source(stack, identities={"retired": "keep_matching"})
    _steps_1_and_2(stack)
    mo = _profile(stack, "old@x.io")
    assert {"kind": "email", "value": "new@x.io"} in mo["identities"]
    assert {"kind": "email", "value": "old@x.io"} in mo["identities"]
    _step_4(stack)
    joined = _profile(stack, "new@x.io")
    assert joined["profile_id"] == mo["profile_id"]
    assert joined["attributes"]["first_name"]["value"] == "Someone"


def test_a_merge_is_in_the_history_and_a_split_gives_both_profiles_back(stack: Stack) -> None:
    """Two contacts, one record takes up the other's email (a merge); the history says
    so, and ``crmsync profile split`` gives both back as they were."""
    stack.config["sources"]["other"] = json.loads(json.dumps(stack.config["sources"]["demo"]))
    stack.write_config()
    stack.start("ingest", "mapper", "writer", "console")
    _post(stack, {"id": "m1", "updated_at": T1, "email": "mo@x.io", "first_name": "Mo"})
    sam = {"id": "s1", "updated_at": T1, "email": "sam@x.io", "first_name": "Sam"}
    _post(stack, sam, source="other")
    assert wait_for(lambda: _email_stored(stack, "sam@x.io") and _email_stored(stack, "mo@x.io"))
    mo_id = _profile(stack, "mo@x.io")["profile_id"]
    sam_id = _profile(stack, "sam@x.io")["profile_id"]
    # Sam's record now carries Mo's email: the profile holding it takes Sam's in.
    _post(
        stack, {**sam, "updated_at": T2, "email": "mo@x.io", "first_name": "Samuel"}, source="other"
    )
    assert wait_for(lambda: _record_has(stack, "other:s1", "first_name", "Samuel"))
    merged = _profile(stack, "mo@x.io")
    assert merged["profile_id"] == mo_id
    assert {"kind": "crm", "value": "other:s1"} in merged["identities"]

    # The history tells the merge and each change with its source and rule.
    def history() -> dict[str, Any]:
        result = stack.cli("profile", "history", "--email", "mo@x.io", "--json")
        assert result.returncode == 0, result.stderr
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    assert wait_for(lambda: history()["merges"], timeout_s=60)
    told = history()
    assert told["merges"][0]["merged_profile_id"] == sam_id
    names = [
        (e["name"], e["new"], e["source"]) for e in told["entries"] if e["what"] == "attribute"
    ]
    assert ("first_name", "Mo", "demo") in names
    assert ("first_name", "Samuel", "other") in names
    first = next(e for e in told["entries"] if e.get("name") == "first_name")
    assert "map first_name" in first["rule"] and "last_writer_wins" in first["rule"]
    added = [e["identity"] for e in told["entries"] if e["what"] == "identity added"]
    assert "email:mo@x.io" in added and "crm:other:s1" in added
    # The split: Sam's record goes back to Sam's profile, with its own values.
    result = stack.cli("profile", "split", str(sam_id), "--wait", "60")
    assert result.returncode == 0, result.stderr
    mo = _profile(stack, "mo@x.io")
    sam_back = json.loads(stack.cli("profile", "get", "--id", "other:s1").stdout)
    assert sam_back["profile_id"] == sam_id
    assert sam_back["attributes"]["first_name"]["value"] == "Samuel"
    assert {"kind": "crm", "value": "other:s1"} not in mo["identities"]
    assert mo["attributes"]["first_name"]["value"] == "Mo"
    assert wait_for(lambda: history()["merges"][0]["split"], timeout_s=60)
