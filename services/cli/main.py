"""``crmsync``: operate crmsync from a shell.

Commands read the same config as the services (``--config`` or ``CRMSYNC_CONFIG``)
and exit 0 on success, 1 when what was asked for is not there, 2 on bad usage or an
invalid config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from services.cli.admin_client import admin_call
from services.cli.erase_command import ErasureNotSent, erase
from services.cli.rejected_command import add_commands as add_rejected_commands
from services.core.config import ConfigError, Settings, config_path, load_settings
from services.core.contracts import Identity
from services.core.settings_base import MissingSecretError
from services.writer.lookup import BadLookup, identity_of
from services.writer.stores import open_sql_store, open_store
from services.writer.stores.cdp_wire import profile_json
from services.writer.stores.snapshots import PushProgress


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None
    try:
        raise SystemExit(args.handler(settings, args))
    except MissingSecretError as exc:
        sys.stderr.write(f"a secret the config names is missing: {exc}\n")
        raise SystemExit(2) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crmsync", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: $CRMSYNC_CONFIG or crmsync.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", help="work with the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    validate = config_commands.add_parser("validate", help="check the config and list problems")
    validate.set_defaults(handler=_validate)

    topics = commands.add_parser("topics", help="Kafka topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True)
    create = topic_commands.add_parser("create", help="create missing topics from the config")
    create.set_defaults(handler=_create_topics)

    fullsync = commands.add_parser("fullsync", help="full syncs (run by ingest)")
    fullsync_commands = fullsync.add_subparsers(dest="fullsync_command", required=True)
    for name, handler, text in (
        ("start", _fullsync_start, "start a full sync of a source"),
        ("status", _fullsync_status, "show a source's full sync and its progress"),
        ("cancel", _fullsync_cancel, "cancel a source's running full sync"),
    ):
        command = fullsync_commands.add_parser(name, help=text)
        command.add_argument("source")
        if name == "start":
            command.add_argument(
                "--wait", action="store_true", help="follow the progress until it ends"
            )
        command.set_defaults(handler=handler)

    importing = commands.add_parser("import", help="import an export file as a full sync")
    import_kinds = importing.add_subparsers(dest="import_kind", required=True)
    csv_import = import_kinds.add_parser("csv", help="a CSV export of the source's records")
    csv_import.add_argument("source")
    csv_import.add_argument("file", type=Path)
    csv_import.add_argument("--page-size", type=int, default=1000)
    csv_import.set_defaults(handler=_import_csv)

    source = commands.add_parser("source", help="pause and resume a source")
    source_commands = source.add_subparsers(dest="source_command", required=True)
    for name, text in (
        ("pause", "hold a source's changes (they queue durably)"),
        ("resume", "apply a paused source's queued changes, in order"),
    ):
        command = source_commands.add_parser(name, help=text)
        command.add_argument("source")
        command.set_defaults(handler=_source_pause_or_resume)

    status = commands.add_parser(
        "status", help="every source (polls, full syncs) and destination (changes waiting)"
    )
    status.set_defaults(handler=_status)

    _add_destination_commands(commands)
    add_rejected_commands(commands)

    profile = commands.add_parser("profile", help="look up profiles in the store")
    profile_commands = profile.add_subparsers(dest="profile_command", required=True)
    get = profile_commands.add_parser("get", help="show one profile with provenance")
    which = get.add_mutually_exclusive_group(required=True)
    which.add_argument("--email", help="the profile's email address")
    which.add_argument("--id", dest="crm_id", metavar="SOURCE:ID", help="a CRM record id")
    get.set_defaults(handler=_profile_get)
    erasing = profile_commands.add_parser(
        "erase", help="erase a profile's personal data (keeps tombstones, no PII)"
    )
    which = erasing.add_mutually_exclusive_group(required=True)
    which.add_argument("--email", help="the profile's email address")
    which.add_argument("--id", dest="crm_id", metavar="SOURCE:ID", help="a CRM record id")
    erasing.set_defaults(handler=_profile_erase)
    return parser


def _add_destination_commands(commands: Any) -> None:
    destination = commands.add_parser("destination", help="send profiles to a destination")
    destination_commands = destination.add_subparsers(dest="destination_command", required=True)
    pushing = destination_commands.add_parser(
        "push", help="send every profile to a destination once (resumable)"
    )
    pushing.add_argument("name")
    pushing.add_argument("--batch", type=int, default=1000, help="profiles per transaction")
    pushing.add_argument("--restart", action="store_true", help="push everything again")
    pushing.add_argument("--wait", action="store_true", help="until the destination took all")
    pushing.set_defaults(handler=_destination_push)
    previewing = destination_commands.add_parser(
        "preview", help="show the requests a push would send, sending nothing"
    )
    previewing.add_argument("name")
    previewing.add_argument("--limit", type=int, default=3, help="profiles to show")
    previewing.add_argument("--email", help="only the profile with this email")
    previewing.set_defaults(handler=_destination_preview)


def _validate(settings: Settings, args: argparse.Namespace) -> int:
    sources = ", ".join(sorted(settings.sources)) or "none"
    destinations = ", ".join(sorted(settings.destinations)) or "none"
    print(f"{config_path(args.config)}: valid (sources: {sources}; destinations: {destinations})")
    return 0


def _create_topics(settings: Settings, _args: argparse.Namespace) -> int:
    from services.core.kafka import ensure_topics

    created = ensure_topics(settings.kafka, client_id="crmsync-cli")
    print("created: " + (", ".join(created) if created else "nothing, all topics exist"))
    return 0


def _fullsync_start(settings: Settings, args: argparse.Namespace) -> int:
    code, body = admin_call(settings, "POST", f"/fullsync/{args.source}")
    if code != 202:
        return _refused(code, body)
    print(f"started {body['sync_id']}")
    if not args.wait:
        return 0
    return _follow(settings, args.source)


def _follow(settings: Settings, source: str) -> int:
    while True:
        time.sleep(1)
        code, body = admin_call(settings, "GET", f"/fullsync/{source}")
        if code != 200:
            return _refused(code, body)
        print(_progress_line(body), flush=True)
        if body["status"] != "RUNNING":
            return 0 if body["status"] == "COMPLETED" else 1


def _fullsync_status(settings: Settings, args: argparse.Namespace) -> int:
    code, body = admin_call(settings, "GET", f"/fullsync/{args.source}")
    if code != 200:
        return _refused(code, body)
    print(json.dumps(body, indent=2))
    return 0


def _fullsync_cancel(settings: Settings, args: argparse.Namespace) -> int:
    code, body = admin_call(settings, "DELETE", f"/fullsync/{args.source}")
    if code != 202:
        return _refused(code, body)
    print(f"{body['sync_id']}: {body['status']}")
    return 0


def _import_csv(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.csv_command import import_csv

    return import_csv(settings, source=args.source, path=args.file, page_size=args.page_size)


def _source_pause_or_resume(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.source_command import pause_or_resume

    return pause_or_resume(settings, args.source, args.source_command)


def _destination_push(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.destination_command import push

    return push(settings, args.name, batch=args.batch, restart=args.restart, wait=args.wait)


def _destination_preview(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.preview_command import preview

    return preview(settings, args.name, limit=args.limit, email=args.email)


def _status(settings: Settings, _args: argparse.Namespace) -> int:
    code, body = admin_call(settings, "GET", "/status")
    if code != 200:
        return _refused(code, body)
    written = _profiles_by_mapping_version(settings)
    for source, info in body["sources"].items():
        print(f"{source} ({info['kind']}, mapping v{info['mapping_version']})")
        older = sum(
            count
            for version, count in written.get(source, {}).items()
            if version < info["mapping_version"]
        )
        if older:
            print(
                f"  profiles: {older} written under an older mapping than "
                f"v{info['mapping_version']}; a full sync is due"
            )
        if info.get("paused"):
            print(f"  paused since {info['paused']['since']}: changes queue until resumed")
        if info["webhook"]:
            print("  webhook: receiving")
        poll = info["poll"]
        if poll is not None:
            state = "failing" if poll["consecutive_failures"] else "ok"
            print(
                f"  poll: {poll['schedule']}, {state}, last success {poll['last_success_at']}, "
                f"watermark {poll['watermark']}"
            )
            if poll["last_error"]:
                print(f"    last error: {poll['last_error']}")
        if info["fullsync"] is not None:
            print(f"  full sync: {_progress_line(info['fullsync'])}")
    _destinations_status(settings)
    return 0


def _destinations_status(settings: Settings) -> None:
    if not settings.destinations:
        return
    from services.outbound.backlog import waiting_changes

    try:
        waiting = waiting_changes(settings)
    except KafkaException as exc:
        sys.stderr.write(f"Kafka not readable, destinations' backlogs unknown: {exc}\n")
        waiting = {}
    pushes = _pushes(settings)
    for name, destination in settings.destinations.items():
        state = "paused" if destination.paused else "delivering"
        behind = waiting.get(name)
        count = "" if behind is None else f", {behind} changes waiting"
        print(f"{name} (destination, {destination.kind}): {state}{count}")
        if pushes is not None:
            print(f"  backfill: {_push_line(pushes.get(name), destination.mapping_version)}")


def _pushes(settings: Settings) -> dict[str, PushProgress | None] | None:
    """Each destination's latest push, from the store; None when it keeps none (the
    HTTP store) or cannot be read."""
    try:
        store = open_sql_store(settings.store, read_only=True)
    except Exception:
        return None
    if store is None:
        return None
    try:
        return {name: store.push_progress(name) for name in settings.destinations}
    except Exception as exc:
        sys.stderr.write(f"store not readable, backfills unknown: {exc}\n")
        return None
    finally:
        store.close()


def _push_line(progress: PushProgress | None, mapping_version: int) -> str:
    if progress is None:
        return f"due: never pushed (crmsync destination push NAME, mapping v{mapping_version})"
    counted = f"{progress.pushed} of {progress.total} profiles"
    if progress.finished_at is None:
        return f"interrupted at {counted}: crmsync destination push NAME resumes it"
    if progress.mapping_version < mapping_version:
        return f"due: pushed under mapping v{progress.mapping_version}, now v{mapping_version}"
    return f"done, {counted} at {progress.finished_at:%Y-%m-%d %H:%M}Z"


def _profiles_by_mapping_version(settings: Settings) -> dict[str, dict[int, int]]:
    try:
        store = open_store(settings.store, read_only=True)
    except Exception as exc:
        sys.stderr.write(f"store not readable, mapping versions unknown: {exc}\n")
        return {}
    try:
        return store.profiles_by_mapping_version()
    finally:
        store.close()


def _progress_line(sync: dict[str, Any]) -> str:
    total = f"/{sync['records_total']}" if sync["records_total"] is not None else ""
    rate = f", {sync['rate_per_s']}/s" if sync["rate_per_s"] else ""
    eta = f", ETA {sync['eta_seconds']}s" if sync["eta_seconds"] is not None else ""
    reason = f" ({sync['reason']})" if sync["reason"] else ""
    return f"{sync['sync_id']} {sync['status']} {sync['records_done']}{total}{rate}{eta}{reason}"


def _refused(code: int, body: dict[str, Any]) -> int:
    sys.stderr.write(f"ingest answered {code}: {body.get('error', body)}\n")
    return 1


def _named_identity(args: argparse.Namespace) -> Identity | None:
    """The profile --email or --id names, or None (and why, on stderr)."""
    try:
        return identity_of(email=args.email, crm_id=args.crm_id, flag="--")
    except BadLookup as exc:
        sys.stderr.write(f"{exc}\n")
        return None


def _profile_erase(settings: Settings, args: argparse.Namespace) -> int:
    identity = _named_identity(args)
    if identity is None:
        return 2
    try:
        event_id = erase(settings, identity)
    except ErasureNotSent as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    print(f"erasure sent ({event_id}); the writer applies it in order with other changes")
    return 0


def _profile_get(settings: Settings, args: argparse.Namespace) -> int:
    identity = _named_identity(args)
    if identity is None:
        return 2
    try:
        store = open_store(settings.store, read_only=True)
    except Exception as exc:
        sys.stderr.write(f"store not readable: {exc}\n")
        return 1
    try:
        profile = store.find_profile(identity)
    finally:
        store.close()
    if profile is None:
        sys.stderr.write(f"no profile with {identity.kind} {identity.value}\n")
        return 1
    print(json.dumps(profile_json(profile), indent=2, ensure_ascii=False))
    return 0
