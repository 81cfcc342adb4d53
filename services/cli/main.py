"""``crmsync``: operate crmsync from a shell.

Commands read the same config as the services (``--config`` or ``CRMSYNC_CONFIG``).
Read commands take ``--json`` and then print one JSON document on stdout; so do the
long ones (``fullsync start``, ``import csv``, ``destination push``), once their work
has ended, their progress going to stderr.

Exit codes, the same for every command (services/cli/exit_codes.py):

- 0: done;
- 1: not there, refused or failed (a full sync that ended FAILED or CANCELLED);
- 2: bad usage or an invalid config;
- 3: a service it needs not reachable: ingest's admin API, the console, or Kafka.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from services.cli.erase_command import erase
from services.cli.exit_codes import DONE, FAILED, UNREACHABLE, USAGE, kafka_unreachable
from services.cli.profile_command import (
    named_identity,
    profile_history,
    profile_split,
    retired_note,
)
from services.cli.rejected_command import add_commands as add_rejected_commands
from services.core.admin_updates import UpdateNotSent
from services.core.config import ConfigError, Settings, load_settings
from services.core.kafka import TopicMismatchError
from services.core.schema_registry import RegistryUnavailable
from services.core.schema_topic import SchemaPublishError
from services.core.settings_base import MissingSecretError
from services.ingest.publisher import BrokerUnavailable
from services.writer.stores import open_store
from services.writer.stores.cdp_wire import profile_json
from services.writer.stores.postgres import PostgresProfileStore
from services.writer.stores.sqlite import SqliteProfileStore


def main(argv: Sequence[str] | None = None) -> None:
    raise SystemExit(run(build_parser().parse_args(argv)))


def run(args: argparse.Namespace) -> int:
    """The exit code of the command ``args`` names."""
    if args.reads_config_itself:
        return int(args.handler(args))
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return USAGE
    try:
        return int(args.handler(settings, args))
    except MissingSecretError as exc:
        sys.stderr.write(f"a secret the config names is missing: {exc}\n")
        return USAGE
    except KafkaException as exc:
        if kafka_unreachable(exc):
            sys.stderr.write(f"Kafka not reachable: {exc}\n")
            return UNREACHABLE
        sys.stderr.write(f"Kafka refused: {exc}\n")
        return FAILED
    except (BrokerUnavailable, SchemaPublishError) as exc:
        sys.stderr.write(f"Kafka not reachable: {exc}\n")
        return UNREACHABLE
    except RegistryUnavailable as exc:
        sys.stderr.write(f"schema registry not reachable: {exc}\n")
        return UNREACHABLE


def _json_flag(parser: argparse.ArgumentParser, text: str = "print JSON, for scripts") -> None:
    parser.add_argument("--json", action="store_true", help=text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crmsync",
        description=__doc__.splitlines()[0],
        epilog="exit codes: 0 done, 1 not there/refused/failed, 2 bad usage or invalid "
        "config, 3 a service (ingest, the console, Kafka) not reachable",
    )
    parser.add_argument("--config", help="config file (default: $CRMSYNC_CONFIG or crmsync.yaml)")
    parser.set_defaults(reads_config_itself=False)
    commands = parser.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", help="work with the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    validate = config_commands.add_parser("validate", help="check the config and list problems")
    _json_flag(validate)
    validate.set_defaults(handler=_validate, reads_config_itself=True)

    topics = commands.add_parser("topics", help="Kafka topics")
    topic_commands = topics.add_subparsers(dest="topics_command", required=True)
    create = topic_commands.add_parser("create", help="create missing topics from the config")
    create.set_defaults(handler=_create_topics)

    _add_fullsync_commands(commands)

    importing = commands.add_parser("import", help="import an export file as a full sync")
    import_kinds = importing.add_subparsers(dest="import_kind", required=True)
    csv_import = import_kinds.add_parser("csv", help="a CSV export of the source's records")
    csv_import.add_argument("source")
    csv_import.add_argument("file", type=Path)
    csv_import.add_argument("--page-size", type=int, default=1000)
    _json_flag(csv_import, "print the ended import as JSON (progress on stderr)")
    csv_import.set_defaults(handler=_import_csv)

    source = commands.add_parser("source", help="pause, resume or test a source")
    source_commands = source.add_subparsers(dest="source_command", required=True)
    for name, text in (
        ("pause", "hold a source's changes (they queue durably)"),
        ("resume", "apply a paused source's queued changes, in order"),
    ):
        command = source_commands.add_parser(name, help=text)
        command.add_argument("source")
        command.set_defaults(handler=_source_pause_or_resume)
    testing = source_commands.add_parser(
        "test", help="show what a source's first records would change, writing nothing"
    )
    testing.add_argument("source")
    testing.add_argument("--limit", type=int, default=5, help="records to test (1 to 100)")
    _json_flag(testing, "the report as the console's API serves it")
    testing.set_defaults(handler=_source_test)

    status = commands.add_parser(
        "status", help="every source (polls, full syncs) and destination (changes waiting)"
    )
    _json_flag(status)
    status.set_defaults(handler=_status)

    _add_destination_commands(commands)
    add_rejected_commands(commands)
    _add_profile_commands(commands)
    return parser


def _add_fullsync_commands(commands: Any) -> None:
    fullsync = commands.add_parser("fullsync", help="full syncs (run by ingest)")
    fullsync_commands = fullsync.add_subparsers(dest="fullsync_command", required=True)
    starting = fullsync_commands.add_parser("start", help="start a full sync of a source")
    starting.add_argument("source")
    starting.add_argument("--wait", action="store_true", help="follow the progress until it ends")
    _json_flag(starting, "print the sync as JSON (with --wait: once it ended)")
    starting.set_defaults(handler=_fullsync_start)
    showing = fullsync_commands.add_parser(
        "status", help="show a source's full sync and its progress"
    )
    showing.add_argument("source")
    _json_flag(showing, "JSON, as without it")
    showing.set_defaults(handler=_fullsync_status)
    cancelling = fullsync_commands.add_parser("cancel", help="cancel a source's running full sync")
    cancelling.add_argument("source")
    cancelling.set_defaults(handler=_fullsync_cancel)


def _add_destination_commands(commands: Any) -> None:
    destination = commands.add_parser(
        "destination", help="send profiles to a destination; pause and resume it"
    )
    destination_commands = destination.add_subparsers(dest="destination_command", required=True)
    pushing = destination_commands.add_parser(
        "push", help="send every profile to a destination once (resumable)"
    )
    pushing.add_argument("name")
    pushing.add_argument("--batch", type=int, default=1000, help="profiles per transaction")
    pushing.add_argument("--restart", action="store_true", help="push everything again")
    pushing.add_argument("--wait", action="store_true", help="until the destination took all")
    _json_flag(pushing, "print the push's figures as JSON at the end (progress on stderr)")
    pushing.set_defaults(handler=_destination_push)
    previewing = destination_commands.add_parser(
        "preview", help="show the requests a push would send, sending nothing"
    )
    previewing.add_argument("name")
    previewing.add_argument("--limit", type=int, default=3, help="profiles to show")
    previewing.add_argument("--email", help="only the profile with this email")
    _json_flag(previewing, "the requests as a JSON list, one object per profile")
    previewing.set_defaults(handler=_destination_preview)
    for action, text in (
        ("pause", "hold a destination's deliveries (its changes wait in Kafka)"),
        ("resume", "deliver what waited for a paused destination, in order"),
    ):
        command = destination_commands.add_parser(action, help=text)
        command.add_argument("name")
        command.set_defaults(handler=_destination_pause_or_resume)


def _add_profile_commands(commands: Any) -> None:
    profile = commands.add_parser("profile", help="look up profiles in the store")
    profile_commands = profile.add_subparsers(dest="profile_command", required=True)
    get = profile_commands.add_parser("get", help="show one profile with provenance")
    _which_profile(get)
    _json_flag(get, "JSON, as without it")
    get.set_defaults(handler=_profile_get)
    erasing = profile_commands.add_parser(
        "erase", help="erase a profile's personal data (keeps tombstones, no PII)"
    )
    _which_profile(erasing)
    erasing.set_defaults(handler=_profile_erase)
    splitting = profile_commands.add_parser(
        "split", help="undo a merge: give a merged profile's records back to a profile of its own"
    )
    splitting.add_argument("merged_id", type=int, help="the merged profile's id (see history)")
    splitting.add_argument(
        "--wait", type=float, default=0, metavar="SECONDS", help="until the writer has applied it"
    )
    _json_flag(splitting, "the event id and the profile split off, as JSON")
    splitting.set_defaults(handler=profile_split)
    history = profile_commands.add_parser(
        "history", help="every identity and attribute change, with its source and rule"
    )
    _which_profile(history).add_argument("--profile", type=int, help="the profile id")
    _json_flag(history, "the console's answer as JSON")
    history.set_defaults(handler=profile_history)


def _which_profile(parser: argparse.ArgumentParser) -> Any:
    """--email or --id, one of them required; the group, for more ways."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--email", help="the profile's email address")
    which.add_argument("--id", dest="crm_id", metavar="SOURCE:ID", help="a CRM record id")
    return which


def _validate(args: argparse.Namespace) -> int:
    from services.cli.config_command import validate

    return validate(args.config, as_json=args.json)


def _create_topics(settings: Settings, _args: argparse.Namespace) -> int:
    from services.core.kafka import ensure_topics

    try:
        created = ensure_topics(settings.kafka, client_id="crmsync-cli")
    except TopicMismatchError as exc:
        sys.stderr.write(f"topics differ from the config: {exc}\n")
        return FAILED
    print("created: " + (", ".join(created) if created else "nothing, all topics exist"))
    return DONE


def _fullsync_start(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.fullsync_command import start

    return start(settings, args.source, wait=args.wait, as_json=args.json)


def _fullsync_status(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.fullsync_command import status

    return status(settings, args.source)


def _fullsync_cancel(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.fullsync_command import cancel

    return cancel(settings, args.source)


def _import_csv(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.csv_command import import_csv

    return import_csv(
        settings, source=args.source, path=args.file, page_size=args.page_size, as_json=args.json
    )


def _source_pause_or_resume(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.source_command import pause_or_resume

    return pause_or_resume(settings, args.source, args.source_command)


def _destination_pause_or_resume(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.source_command import pause_or_resume

    return pause_or_resume(settings, args.name, args.destination_command, of="destinations")


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.status_command import status

    return status(settings, as_json=args.json)


def _source_test(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.test_sync_command import run_source_test

    return run_source_test(settings, args.source, limit=args.limit, as_json=args.json)


def _destination_push(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.destination_command import push

    return push(
        settings,
        args.name,
        batch=args.batch,
        restart=args.restart,
        wait=args.wait,
        as_json=args.json,
    )


def _destination_preview(settings: Settings, args: argparse.Namespace) -> int:
    from services.cli.preview_command import preview

    return preview(settings, args.name, limit=args.limit, email=args.email, as_json=args.json)


def _profile_erase(settings: Settings, args: argparse.Namespace) -> int:
    identity = named_identity(args)
    if identity is None:
        return USAGE
    try:
        event_id = erase(settings, identity)
    except UpdateNotSent as exc:
        sys.stderr.write(f"{exc}\n")
        return FAILED
    print(f"erasure sent ({event_id}); the writer applies it in order with other changes")
    return DONE


def _profile_get(settings: Settings, args: argparse.Namespace) -> int:
    """The profile as JSON, with or without ``--json`` (it always printed JSON)."""
    identity = named_identity(args)
    if identity is None:
        return USAGE
    try:
        store = open_store(settings.store, read_only=True)
    except Exception as exc:
        sys.stderr.write(f"store not readable: {exc}\n")
        return FAILED
    try:
        profile = store.find_profile(identity)
        kept_by = (
            store.retired_from(identity)
            if profile is None and isinstance(store, SqliteProfileStore | PostgresProfileStore)
            else []
        )
    finally:
        store.close()
    if profile is None:
        sys.stderr.write(f"no profile with {identity.kind} {identity.value}\n")
        for holder in kept_by:
            sys.stderr.write(f"{retired_note(holder, identity)}\n")
        return FAILED
    print(json.dumps(profile_json(profile), indent=2, ensure_ascii=False))
    return DONE
