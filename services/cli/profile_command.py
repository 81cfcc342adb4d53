"""``crmsync profile split|history``, and why ``crmsync profile get`` finds no profile
for an identity a profile keeps as retired.

Exit codes (services/cli/exit_codes.py): 0 done, 1 not found (or a split not back
within ``--wait``), 3 Kafka or the console not reachable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from services.cli.console_client import console_call
from services.cli.exit_codes import DONE, FAILED, UNREACHABLE, USAGE, refused
from services.core.admin_updates import UpdateNotSent, send_update, split_update
from services.core.config import Settings
from services.core.contracts import Identity
from services.writer.lookup import BadLookup, identity_of
from services.writer.stores import open_sql_store, open_store
from services.writer.stores.base import StoredProfile
from services.writer.stores.cdp_wire import profile_json


def retired_note(holder: StoredProfile, identity: Identity) -> str:
    """Why ``identity`` finds no profile although ``holder`` kept it, retired."""
    retired = next(r for r in holder.retired if r.identity == identity)
    return (
        f"{identity.kind} {identity.value} is retired on profile {holder.profile_id}: no "
        f"source record asserts it since {retired.source} record {retired.record_id} let go "
        f"of it ({retired.retired_at.isoformat()}); it is kept as history and matches no "
        "profile (profile.identities.retired: keep_matching keeps such identities matching)"
    )


def profile_split(settings: Settings, args: argparse.Namespace) -> int:
    """``crmsync profile split MERGED_ID``: undo a merge; with ``--wait``, until the
    writer has given the profile back (a SQL store) or the time is up."""
    update = split_update(args.merged_id)
    try:
        send_update(settings, update, what="split")
    except UpdateNotSent as exc:
        sys.stderr.write(f"{exc}\n")
        return UNREACHABLE
    back = _wait_for_profile(settings, args.merged_id, args.wait) if args.wait else None
    if args.json:
        shown = profile_json(back) if back is not None else None
        print(json.dumps({"event_id": update.event_id, "profile": shown}, indent=2))
    elif back is not None:
        print(f"profile {args.merged_id} split off again ({update.event_id})")
    else:
        print(f"split of profile {args.merged_id} sent ({update.event_id}); the writer applies it")
    if args.wait and back is None:
        sys.stderr.write(
            f"profile {args.merged_id} not back after {args.wait:g}s: a split the writer "
            "refuses goes to the rejected topic (crmsync rejected list --stage writer)\n"
        )
        return FAILED
    return DONE


def _wait_for_profile(
    settings: Settings, profile_id: int, timeout_s: float
) -> StoredProfile | None:
    store = open_sql_store(settings.store, read_only=True)
    if store is None:
        return None  # a CDP: nothing to read it back from
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            found = store.profiles_by_id([profile_id])
            if found or time.monotonic() >= deadline:
                return found[0] if found else None
            time.sleep(0.5)
    finally:
        store.close()


def named_identity(args: argparse.Namespace) -> Identity | None:
    """The profile --email or --id names, or None (and why, on stderr)."""
    try:
        return identity_of(email=args.email, crm_id=args.crm_id, flag="--")
    except BadLookup as exc:
        sys.stderr.write(f"{exc}\n")
        return None


def profile_history(settings: Settings, args: argparse.Namespace) -> int:
    """``crmsync profile history``: the console's account of a profile's changes."""
    profile_id = args.profile
    if profile_id is None:
        identity = named_identity(args)
        if identity is None:
            return USAGE
        store = open_store(settings.store, read_only=True)
        try:
            found = store.find_profile(identity)
        finally:
            store.close()
        if found is None:
            sys.stderr.write(f"no profile with {identity.kind} {identity.value}\n")
            return FAILED
        profile_id = found.profile_id
    code, body = console_call(settings, "GET", f"/profiles/{profile_id}")
    if code != 200:
        return refused("the console", code, body)
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return DONE
    for merge in body["merges"]:
        state = "split off again" if merge["split"] else "merged"
        merged, into = merge["merged_profile_id"], merge["into_profile_id"]
        print(f"{merge['at']} profile {merged} {state} (into {into})")
    for e in body["entries"]:
        who = f"{e['source']}:{e['record_id']}" if e["record_id"] else e["source"] or "-"
        if e["what"] == "attribute":
            what = f"{e['name']}: {json.dumps(e['old'])} -> {json.dumps(e['new'])}"
        else:
            what = f"{e['what']} {e['identity']}"
        print(f"{e['at']} profile {e['profile_id']} {what} [{who}] {e['rule']}")
    if not body["entries"]:
        print(f"nothing about profile {profile_id} in the console's index")
    return DONE
