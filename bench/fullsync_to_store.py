"""Full sync to store benchmark: N HubSpot contacts into PostgreSQL, with real-time changes.

Everything runs as its own process on this machine: a Kafka broker (bench_broker), a
durable PostgreSQL (deploy/postgres/local_postgres.py, instance "fsbench" on port
36632, a fresh database), the fake HubSpot serving N generated contacts, and the three
services on a fresh topic prefix with one `hubspot` source: its API for the full sync,
its webhooks (X-HubSpot-Signature-v3 with the app's client secret) for real-time
changes, and the PostgreSQL store.

The full sync is started through ingest's admin API. While it runs, R of the same
contacts get a signed v3 `contact.propertyChange` webhook each, setting `firstname`
to a new value with an `occurredAt` one second after the contact's modification time
in the fake (the version the full sync carries; read from the fake before the start)
or now, whichever is later, so the real-time change is the newer one and must win.
They go in deliveries of up to 100 events, each spread over the whole id range,
paced by the sync's progress: every one is sent before half of the records are in
Kafka. The mapper holds them behind the barrier and applies them once the sync's
records are mapped.

Timed from the full sync's start to the moment the store holds every one of the N
contacts and every real-time change (the store is polled once a second; the end is
the last write, the store's own `written_at`). Reported: seconds and records/s end to
end, the pull into Kafka (ingest's STARTED to COMPLETED, as fullsync_pull reports it),
the peak of changes the mapper held, peak RSS of the mapper and the writer, and the
check: a real-time change whose value is not what the store holds at the end, or that
was written before the sync's COMPLETED reached the barrier, fails the benchmark.

HubSpot's full sync reads the contacts list, 100 a page (the most the list API
gives, and what the connector always asks for); --page-size records that. With
--mapper-workers W > 1 the config gets `services.mapper.workers: W` (and at least W
partitions); the peak RSS is then the largest worker's, each worker's listed too.

Usage: python -m bench.fullsync_to_store [--records N] [--realtime R] [--page-size P]
       [--mapper-workers W] [--timeout S]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import psycopg
from confluent_kafka import Consumer

from bench.common import BENCH_KAFKA_PORT, bench_broker, write_results
from bench.fullsync_pull import source_config, start_fake
from bench.mapper_throughput import RssSampler
from services.core.codecs import load_contracts
from services.core.contracts import ControlKind
from tests.fakes.hubspot import (
    APP_ID,
    CLIENT_SECRET,
    LIST_MAX_LIMIT,
    PORTAL_ID,
    TOKEN,
    datetime_millis,
    webhook_request,
)
from tests.support.postgres import LocalPostgres, fresh_database
from tests.support.services import Stack, held_changes
from tests.support.webhooks import post_webhook

SOURCE: Final = "hubspot"
POSTGRES_NAME: Final = "fsbench"
POSTGRES_PORT: Final = 36632
DATABASE: Final = "fullsync_to_store"
# The fake numbers the contacts it seeds from 101 on.
FIRST_CONTACT_ID: Final = 101
REALTIME_PROPERTY: Final = "firstname"
REALTIME_ATTRIBUTE: Final = "first_name"
# How much newer than the contact's modification time in the CRM a change is.
REALTIME_NEWER_MS: Final = 1000
FIRST_EVENT_ID: Final = 7_000_000_000
EVENTS_PER_DELIVERY: Final = 100  # the most HubSpot sends in one request
# Every real-time change is sent before this share of the records is in Kafka.
SENT_BY_SHARE: Final = 0.5
SYNC_POLL_S: Final = 0.1
STORE_POLL_S: Final = 1.0
SECRET_ENV: Final = "BENCH_HUBSPOT_CLIENT_SECRET"

CONTACTS_SQL: Final = "SELECT count(*) FROM identities WHERE kind = 'crm'"
REALTIME_SQL: Final = (
    "SELECT i.value, a.value, a.source_modified_at, a.written_at "
    "FROM identities i JOIN attributes a ON a.profile_id = i.profile_id AND a.name = %s "
    "WHERE i.kind = 'crm' AND i.value = ANY(%s)"
)
LAST_WRITE_SQL: Final = "SELECT max(written_at) FROM attributes"


@dataclass(frozen=True)
class Change:
    """One real-time change: the contact, its new value, its version (Unix ms)."""

    record_id: str
    value: str
    occurred_ms: int

    @property
    def identity(self) -> str:
        return f"{SOURCE}:{self.record_id}"


@dataclass
class SyncRun:
    """The full sync as it went, with the real-time deliveries sent during it."""

    status: dict[str, Any]
    accepted_at: list[float] = field(default_factory=list)
    """Wall time each delivery was acknowledged (200)."""
    held_peak: float = 0.0


# --- preconditions -----------------------------------------------------------------------


def require_free_broker_port() -> None:
    """bench_broker starts (or finds running) a broker on its fixed port, and stops it
    afterwards: another benchmark's broker there must be left alone."""
    if os.environ.get("CRMSYNC_BENCH_BOOTSTRAP"):
        return
    with socket.socket() as sock:
        sock.settimeout(1.0)
        if sock.connect_ex(("127.0.0.1", BENCH_KAFKA_PORT)) == 0:
            raise SystemExit(
                f"port 127.0.0.1:{BENCH_KAFKA_PORT} (the benchmarks' broker) is in use: "
                "another benchmark is running; try again when it has finished"
            )


# --- the real-time changes ---------------------------------------------------------------


def realtime_ids(records: int, count: int) -> list[str]:
    """``count`` contacts spread evenly over the fake's id range."""
    step = records / count
    return [str(FIRST_CONTACT_ID + int(i * step)) for i in range(count)]


def modification_times(base_url: str, ids: Sequence[str]) -> dict[str, int]:
    """Each contact's lastmodifieddate in the fake (Unix ms): the full sync's version."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    found: dict[str, int] = {}
    try:
        for record_id in ids:
            after = base64.urlsafe_b64encode(record_id.encode()).decode()
            connection.request(
                "GET",
                f"/crm/v3/objects/contacts?limit=1&after={after}&properties={REALTIME_PROPERTY}",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            response = connection.getresponse()
            body = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"fake HubSpot answered {response.status}: {body}")
            [record] = body["results"]
            if record["id"] != record_id:
                raise RuntimeError(f"fake HubSpot has no contact {record_id}")
            found[record_id] = datetime_millis(record["properties"]["lastmodifieddate"])
    finally:
        connection.close()
    return found


def realtime_changes(ids: Sequence[str], modified: dict[str, int]) -> list[Change]:
    now_ms = int(time.time() * 1000)
    return [
        Change(
            record_id=record_id,
            value=f"Realtime{record_id}",
            occurred_ms=max(now_ms, modified[record_id] + REALTIME_NEWER_MS),
        )
        for record_id in ids
    ]


def deliveries(changes: Sequence[Change]) -> list[list[dict[str, Any]]]:
    """HubSpot v3 event batches, each spread over the whole id range."""
    count = math.ceil(len(changes) / EVENTS_PER_DELIVERY)
    events = [
        {
            "eventId": FIRST_EVENT_ID + index,
            "subscriptionId": 1001,
            "portalId": PORTAL_ID,
            "appId": APP_ID,
            "occurredAt": change.occurred_ms,
            "subscriptionType": "contact.propertyChange",
            "attemptNumber": 0,
            "objectId": int(change.record_id),
            "changeSource": "CRM_UI",
            "sourceId": "userId:4242",
            "propertyName": REALTIME_PROPERTY,
            "propertyValue": change.value,
        }
        for index, change in enumerate(changes)
    ]
    return [events[k::count] for k in range(count)]


def send(ingest_url: str, events: list[dict[str, Any]]) -> float:
    """One signed delivery, retried while ingest answers 503; its acknowledgement time."""
    hook_url = f"{ingest_url}/webhooks/{SOURCE}"
    while True:
        # Signed afresh each attempt: the signature's timestamp is checked.
        body, headers = webhook_request(events, url=hook_url, secret=CLIENT_SECRET)
        status, answer_headers, answer = post_webhook(
            ingest_url, body, source=SOURCE, token=None, headers=headers
        )
        if status == 200:
            if answer.get("accepted") != len(events):
                raise RuntimeError(f"webhook accepted {answer} of {len(events)} events")
            return time.time()
        if status != 503:
            raise RuntimeError(f"webhook answered {status}: {answer}")
        time.sleep(float(answer_headers.get("Retry-After", "0.2")))


# --- the run -----------------------------------------------------------------------------


def run_sync(stack: Stack, batches: list[list[dict[str, Any]]], records: int) -> SyncRun:
    """Start the full sync, send the deliveries as it progresses, return when it ends."""
    ingest = stack["ingest"]
    code, status = ingest.admin("POST", f"/fullsync/{SOURCE}")
    if code != 202:
        raise RuntimeError(f"full sync not started: {code} {status}")
    run = SyncRun(status=status)
    # Delivery k once k/count of the share is in Kafka: the first at once.
    thresholds = [records * SENT_BY_SHARE * k / len(batches) for k in range(len(batches))]
    polls = 0
    while True:
        while len(run.accepted_at) < len(batches) and (
            run.status["status"] != "RUNNING"
            or run.status["records_done"] >= thresholds[len(run.accepted_at)]
        ):
            run.accepted_at.append(send(ingest.url, batches[len(run.accepted_at)]))
        if run.status["status"] != "RUNNING" and len(run.accepted_at) == len(batches):
            return run
        time.sleep(SYNC_POLL_S)
        _, run.status = ingest.admin("GET", f"/fullsync/{SOURCE}")
        polls += 1
        if polls % round(STORE_POLL_S / SYNC_POLL_S) == 0:
            run.held_peak = max(run.held_peak, held_changes(stack))


def completed_at(bootstrap: str, topic: str, sync_id: str) -> float:
    """When ingest wrote the sync's COMPLETED to the barrier (Unix seconds)."""
    codec = load_contracts().sync_control
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-barrier-{sync_id}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            control = codec.decode(message.value() or b"")
            if control.sync_id == sync_id and control.kind is ControlKind.COMPLETED:
                return control.at.timestamp()
    finally:
        consumer.close()
    raise RuntimeError(f"no COMPLETED for {sync_id} on {topic}")


def stored_realtime(
    conn: psycopg.Connection[Any], changes: Sequence[Change]
) -> dict[str, tuple[Any, int, int]]:
    """identity -> (value, source_modified_at µs, written_at µs) of the changed attribute."""
    rows = conn.execute(REALTIME_SQL, (REALTIME_ATTRIBUTE, [c.identity for c in changes]))
    return {
        str(identity): (value, int(modified), int(written))
        for identity, value, modified, written in rows
    }


def matching(changes: Sequence[Change], stored: dict[str, tuple[Any, int, int]]) -> int:
    return sum(
        1
        for c in changes
        if c.identity in stored and stored[c.identity][:2] == (c.value, c.occurred_ms * 1000)
    )


def wait_stored(
    conn: psycopg.Connection[Any],
    stack: Stack,
    *,
    records: int,
    changes: Sequence[Change],
    run: SyncRun,
    timeout_s: float,
) -> tuple[int, float | None]:
    """Poll the store once a second until it holds every contact and every change.

    Returns the contacts stored and when it was seen complete (None: timed out)."""
    deadline = time.monotonic() + timeout_s
    contacts = 0
    while True:
        if contacts < records:
            row = conn.execute(CONTACTS_SQL).fetchone()
            contacts = int(row[0]) if row else 0
        done = contacts >= records and matching(changes, stored_realtime(conn, changes)) == len(
            changes
        )
        if done:
            return contacts, time.time()
        if time.monotonic() > deadline:
            return contacts, None
        run.held_peak = max(run.held_peak, held_changes(stack))
        time.sleep(STORE_POLL_S)


def child_pids(pid: int) -> list[int]:
    """A service's worker processes (services.mapper.workers > 1)."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(child) for child in found.stdout.split()]


def configure(stack: Stack, *, dsn: str, mapper_workers: int) -> int:
    """The PostgreSQL store, the public URL HubSpot signs, mapper workers; partitions."""
    config = stack.config
    config["store"] = {"kind": "postgres", "dsn": dsn}
    config["services"]["ingest"]["public_base_url"] = stack["ingest"].url
    topics = config["kafka"]["topics"]
    if mapper_workers > 1:
        config["services"]["mapper"]["workers"] = mapper_workers
        # A mapper worker needs a partition of its own.
        partitions = max(topics["changes"]["partitions"], mapper_workers)
        for role in ("changes", "fullsync", "profile_updates"):
            topics[role]["partitions"] = partitions
    stack.write_config()
    return int(topics["changes"]["partitions"])


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


@dataclass
class Measured:
    """What one run saw, for the figures and the checks."""

    partitions: int
    started: float
    run: SyncRun
    changes: list[Change]
    contacts: int
    seen_at: float | None
    last_write: float
    stored: dict[str, tuple[Any, int, int]]
    barrier_at: float
    mapper_peaks: list[int]
    writer_peak: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--realtime", type=int, default=2_000)
    parser.add_argument("--page-size", type=int, default=LIST_MAX_LIMIT)
    parser.add_argument("--mapper-workers", type=int, default=1)
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds for the store (default: by N)"
    )
    args = parser.parse_args()
    if args.page_size != LIST_MAX_LIMIT:
        raise SystemExit(
            f"--page-size {args.page_size}: HubSpot's full sync reads the contacts list "
            f"{LIST_MAX_LIMIT} a page, the most the list API gives; no other size"
        )
    if not 1 <= args.realtime <= args.records:
        raise SystemExit("--realtime must be between 1 and --records")
    if args.mapper_workers < 1:
        raise SystemExit("--mapper-workers must be at least 1")
    if args.timeout is None:
        args.timeout = 900 + args.records / 250
    return args


def measure(args: argparse.Namespace) -> Measured:
    """Start everything, run the sync with its real-time changes, stop everything."""
    ids = realtime_ids(args.records, args.realtime)
    fake, url = start_fake("hubspot", args.records)
    postgres = LocalPostgres(name=POSTGRES_NAME, port=POSTGRES_PORT)
    try:
        dsn = fresh_database(postgres.start(), DATABASE)
        with bench_broker() as bootstrap, tempfile.TemporaryDirectory() as workdir:
            source = source_config("hubspot", url, args.page_size)
            source["webhooks"] = {"client_secret": {"env": SECRET_ENV}}
            stack = Stack(bootstrap=bootstrap, workdir=Path(workdir), sources={SOURCE: source})
            partitions = configure(stack, dsn=dsn, mapper_workers=args.mapper_workers)
            try:
                stack.start()
                mapper, writer = stack["mapper"].process, stack["writer"].process
                assert mapper is not None and writer is not None
                mapper_samplers = [RssSampler(p) for p in [mapper.pid, *child_pids(mapper.pid)]]
                writer_sampler = RssSampler(writer.pid)
                changes = realtime_changes(ids, modification_times(url, ids))
                with psycopg.connect(dsn, autocommit=True) as conn:
                    started = time.time()
                    run = run_sync(stack, deliveries(changes), args.records)
                    print(f"full sync ended: {run.status}", flush=True)
                    contacts, seen_at = wait_stored(
                        conn,
                        stack,
                        records=args.records,
                        changes=changes,
                        run=run,
                        timeout_s=args.timeout,
                    )
                    row = conn.execute(LAST_WRITE_SQL).fetchone()
                    last_write = int(row[0]) / 1e6 if row and row[0] is not None else time.time()
                    stored = stored_realtime(conn, changes)
                return Measured(
                    partitions=partitions,
                    started=started,
                    run=run,
                    changes=changes,
                    contacts=contacts,
                    seen_at=seen_at,
                    last_write=last_write,
                    stored=stored,
                    barrier_at=completed_at(
                        bootstrap, stack.topic("barrier"), run.status["sync_id"]
                    ),
                    mapper_peaks=[sampler.stop() for sampler in mapper_samplers],
                    writer_peak=writer_sampler.stop(),
                )
            finally:
                stack.stop()
    finally:
        postgres.stop(purge=True)
        fake.terminate()
        fake.wait()


def problems_of(args: argparse.Namespace, m: Measured) -> list[str]:
    status = m.run.status
    found = []
    if status["status"] != "COMPLETED" or status["records_done"] != args.records:
        found.append(f"the full sync ended {status['status']} with {status['records_done']}")
    if m.seen_at is None:
        found.append(
            f"after {args.timeout:.0f}s the store held {m.contacts} of {args.records} contacts "
            f"and {matching(m.changes, m.stored)} of {len(m.changes)} real-time changes"
        )
    mismatches = len(m.changes) - matching(m.changes, m.stored)
    if mismatches:
        found.append(f"{mismatches} real-time changes are not what the store holds")
    early = written_before(m)
    if early:
        found.append(f"{early} real-time changes were written before COMPLETED")
    late = sum(1 for at in m.run.accepted_at if at >= m.barrier_at)
    if late:
        found.append(f"{late} deliveries went out after COMPLETED, so were not held")
    return found


def written_before(m: Measured) -> int:
    """Real-time changes the store holds, written before the sync's COMPLETED: not held."""
    return sum(
        1
        for c in m.changes
        if c.identity in m.stored
        and m.stored[c.identity][:2] == (c.value, c.occurred_ms * 1000)
        and m.stored[c.identity][2] / 1e6 < m.barrier_at
    )


def main() -> None:
    args = parse_args()
    require_free_broker_port()
    os.environ["BENCH_TOKEN"] = TOKEN
    os.environ[SECRET_ENV] = CLIENT_SECRET
    m = measure(args)
    status = m.run.status
    pull_s = seconds_between(status["started_at"], status["finished_at"] or status["updated_at"])
    # The end: the store's last write once it was seen complete (polled once a second).
    total_s = min(m.last_write, m.seen_at) - m.started if m.seen_at is not None else None
    problems = problems_of(args, m)
    figures: dict[str, Any] = {
        "records": args.records,
        "realtime_changes": args.realtime,
        "page_size": args.page_size,
        "mapper_workers": args.mapper_workers,
        "partitions": m.partitions,
        "store": "postgres, durable",
        "seconds": round(total_s, 1) if total_s is not None else None,
        "records_per_s": round(args.records / total_s) if total_s is not None else None,
        "pull_seconds": round(pull_s, 1),
        "pull_records_per_s": round(args.records / pull_s) if pull_s > 0 else None,
        "store_complete_after_pull_s": round(m.last_write - m.barrier_at, 1),
        "realtime_deliveries": len(m.run.accepted_at),
        "realtime_deliveries_after_completed": sum(
            1 for at in m.run.accepted_at if at >= m.barrier_at
        ),
        "realtime_held_peak": round(m.run.held_peak),
        "realtime_mismatches": len(m.changes) - matching(m.changes, m.stored),
        "realtime_written_before_completed": written_before(m),
        "mapper_peak_rss_mib": round(max(m.mapper_peaks) / 1024),
        "writer_peak_rss_mib": round(m.writer_peak / 1024),
        "ok": not problems,
    }
    if len(m.mapper_peaks) > 1:
        figures["mapper_workers_peak_rss_mib"] = [round(peak / 1024) for peak in m.mapper_peaks]
    write_results("fullsync_to_store", figures)
    if problems:
        print("\n*** FULL SYNC TO STORE FAILED ***", file=sys.stderr)
        for problem in problems:
            print(f"*** {problem}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
