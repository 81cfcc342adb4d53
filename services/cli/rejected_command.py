"""``crmsync rejected list|show|replay`` and ``crmsync logs``: the console's index
from a shell.

Exit codes (services/cli/exit_codes.py): 0 done, 1 not found or refused (replay:
some not replayable), 2 bad usage, 3 the console not reachable. ``--json`` prints
the console's answer as it is, for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from services.cli.console_client import console_call
from services.cli.exit_codes import UNAVAILABLE_STATUSES, refused
from services.core.config import Settings


def add_commands(commands: Any) -> None:
    rejected = commands.add_parser("rejected", help="rejected events, and replaying them")
    actions = rejected.add_subparsers(dest="rejected_command", required=True)
    listing = actions.add_parser("list", help="the latest rejections, filtered")
    _filters(listing)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="the console's answer as JSON")
    listing.set_defaults(handler=rejected_list)
    showing = actions.add_parser("show", help="one rejection in full")
    showing.add_argument("id", type=int)
    showing.add_argument("--json", action="store_true")
    showing.set_defaults(handler=rejected_show)
    replaying = actions.add_parser(
        "replay", help="send rejected changes through again (after a config fix)"
    )
    replaying.add_argument("ids", type=int, nargs="*", help="rejection ids (or --all)")
    replaying.add_argument(
        "--all", action="store_true", help="every not yet replayed rejection matching the filters"
    )
    _filters(replaying)
    replaying.add_argument("--json", action="store_true")
    replaying.set_defaults(handler=rejected_replay)

    logs = commands.add_parser(
        "logs", help="a contact's history: received, decided, written, sent, rejected"
    )
    logs.add_argument("profile", help="an email address or SOURCE:RECORD_ID")
    logs.add_argument("--json", action="store_true")
    logs.set_defaults(handler=record_logs)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source")
    parser.add_argument("--stage", choices=["ingest", "mapper", "writer", "outbound", "outbox"])
    parser.add_argument("--reason", help="reason contains this text")
    parser.add_argument("--email")


def rejected_list(settings: Settings, args: argparse.Namespace) -> int:
    query = {
        "source": args.source,
        "stage": args.stage,
        "reason": args.reason,
        "email": args.email,
    }
    code, body = console_call(settings, "GET", "/rejected", query=query)
    if code != 200:
        return _refused(code, body)
    rejections = body["rejections"][: args.limit]
    if args.json:
        print(json.dumps({**body, "rejections": rejections}, indent=2, ensure_ascii=False))
        return 0
    print(f"{body['count']} matching")
    for r in rejections:
        who = r["destination"] or r["source"] or "-"
        record = r["record_id"] or "-"
        replayed = f" (replayed {r['replayed_at']})" if r["replayed_at"] else ""
        print(f"#{r['id']} {r['rejected_at']} {r['stage']} {who} {record}: {r['reason']}{replayed}")
    return 0


def rejected_show(settings: Settings, args: argparse.Namespace) -> int:
    code, body = console_call(settings, "GET", f"/rejected/{args.id}")
    if code != 200:
        return _refused(code, body)
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return 0
    for name in ("id", "rejected_at", "stage", "source", "destination", "record_id", "email"):
        if body.get(name) is not None:
            print(f"{name}: {body[name]}")
    print(f"reason: {body['reason']}")
    print(f"from: {body['origin']}")
    print(f"replayed: {body['replayed_at'] or 'no'}")
    if body.get("why_not_replayable"):
        print(f"not replayable: {body['why_not_replayable']}")
    if body.get("value_text"):
        print(body["value_text"])
    return 0


def rejected_replay(settings: Settings, args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all):
        sys.stderr.write("name rejection ids, or --all with filters\n")
        return 2
    if args.all:
        form = {
            k: v
            for k, v in (
                ("source", args.source),
                ("stage", args.stage),
                ("reason", args.reason),
                ("email", args.email),
                ("replayed", "no"),
            )
            if v
        }
        code, body = console_call(settings, "POST", "/rejected/replay", form=form)
    else:
        replayed: list[int] = []
        refused: dict[str, str] = {}
        code, body = 202, {}
        for rejection_id in args.ids:
            code, body = console_call(settings, "POST", f"/rejected/{rejection_id}/replay")
            if code in UNAVAILABLE_STATUSES:
                return _refused(code, body)
            replayed.extend(body.get("replayed", []))
            refused.update(body.get("refused", {}))
            if code not in (202, 409):
                refused[str(rejection_id)] = body.get("error", f"answered {code}")
        body = {"replayed": replayed, "refused": refused}
        code = 202 if replayed or not refused else 409
    if code not in (202, 409):
        return _refused(code, body)
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        print(f"replayed {len(body['replayed'])}")
        for rejection_id, reason in body["refused"].items():
            print(f"#{rejection_id} not replayed: {reason}")
    return 0 if not body["refused"] else 1


def record_logs(settings: Settings, args: argparse.Namespace) -> int:
    code, body = console_call(settings, "GET", "/records", query={"q": args.profile})
    if code != 200:
        return _refused(code, body)
    if "error" in body:
        sys.stderr.write(f"{body['error']}\n")
        return 2
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False, default=str))
        return 0 if body["events"] else 1
    if not body["events"]:
        sys.stderr.write(f"nothing about {args.profile} in the console's index\n")
        return 1
    for event in body["events"]:
        print(_event_line(event))
    return 0


def _event_line(event: dict[str, Any]) -> str:
    detail = event["detail"]
    where = f"{event['source'] or ''}:{event['record_id'] or ''}"
    head = f"{event['at']} {event['kind']:<9} {where}"
    if event["kind"] == "received":
        return f"{head} by {detail['origin'].lower()}: {', '.join(sorted(detail['fields']))}"
    if event["kind"] in ("decided", "writer"):
        changes = [
            f"{c['field']}: {c['old']!r} -> {c['new']!r} ({c['rule']})" for c in detail["changes"]
        ]
        drops = [f"dropped {d['field']} ({d['code']}: {d['reason']})" for d in detail["dropped"]]
        return f"{head} " + "; ".join(changes + drops)
    if event["kind"] == "written":
        changed = [f"{a['name']}: {a['old']!r} -> {a['new']!r}" for a in detail["attributes"]]
        out = ", ".join(f"{n} {o}" for n, o in (event.get("destinations") or {}).items())
        sent = f" | out: {out}" if out else ""
        what = f"profile {event['profile_id']} {detail['change'].lower()}"
        return f"{head} {what}: {'; '.join(changed)}{sent}"
    if event["kind"] == "rejected":
        return f"{head} at {detail['stage']}: {detail['reason']}"
    return head


def _refused(code: int, body: dict[str, Any]) -> int:
    return refused("console", code, body)
