"""Side by side, end to end: crmsync against the "direct" approach, same load, same machine.

Why: crmsync puts a broker, a stateful exactly-once mapper and a batching writer
between a CRM's webhook and the store. The direct approach (bench/direct_handler.py: a
webhook handler upserting each change straight into PostgreSQL) does none of that, so
it is the floor of work per event. Run in turn on one machine, one PostgreSQL server
and one load, the two say what crmsync's stages cost in events/s and latency, and the
CPU each process spends per event says where that time goes.

Everything runs in one go and everything started here is stopped at the end, on a
failure too (the step that failed is named on stderr, with the services' log tails):

- its own PostgreSQL (deploy/postgres/local_postgres.py, durable: fsync and
  synchronous_commit on) on port 36432 and its own Kafka broker (deploy/kafka, through
  tests/support/kafka.py) on port 36092 (controller 36192), both deleted afterwards;
- for each LOAD, "new" (N events over N new contacts) and "updates" (N events over M
  contacts), in turn: the direct handler on port 36099 on a fresh database; crmsync
  with the PostgreSQL store on a fresh database of the same server; crmsync with the
  SQLite store on a fresh file. Each crmsync run has a fresh topic prefix; its ingest
  (2 workers), mapper and writer run as real processes on ports 36179-36182 with a
  ``hubspot`` source (client secret, the seven properties mapped to attributes);
- the latency mode: new contacts at steady rates, crmsync with the PostgreSQL store,
  a fresh stack per rate.

Before each measured run (and each latency rate) a warm-up load of 30,000 events
over 10,000 contacts of their own (400,000 over 50,000 before the first crmsync run,
which also warms the broker) is sent and written, and left out of the figures: a
freshly started broker JVM, Python process or database is slower for its first
seconds than for the rest of its life, and the figures are of the rest.

The load is what HubSpot posts: batches of 100 ``contact.propertyChange`` events,
signed with X-HubSpot-Signature-v3, 16 requests in flight. Every event sets one of
seven properties to a value of its own, and its ``occurredAt`` is one millisecond after
the previous event's, so the last event of each (contact, property) is the one a
versioned store must hold: that is how a crmsync run knows it is complete (and
correct). The direct handler keeps the last write to arrive, so its run ends when
the last request is answered (each of its upserts has committed by then).

Measured per run:

- accepted events/s: events over the time from the first request to the last answer;
- end-to-end events/s: events over the time from the first request to the last row
  written, by the store's own write times: ``max(written_at)`` of crmsync's attributes
  table (stamped by the writer as it applies a batch, just before the commit), and
  ``max(updated_at)`` of the direct table (``clock_timestamp()`` as a row is upserted);
- request p50/p99 (answered requests; a 429 or 503 is retried after its Retry-After);
- CPU µs per event of each process (its whole process tree: the ingest workers, the
  PostgreSQL backends) from /proc between the first request and the end, and of
  everything else on the machine (/proc/stat's busy time minus those): on a shared
  2-core machine that last figure says whether someone else's work was in the way.

The latency mode sends new contacts at R events/s in requests of 10 events (so 100
requests/s at 1,000 events/s) for about 20 s, open loop. A contact's latency is its
attribute row's ``written_at`` minus the moment its request was sent; each contact's
send time is matched to its own row.

A side-by-side table per load (with crmsync/direct for end to end) and the latency
table are printed; all figures go to bench/results/e2e_compare.json. ``--only`` picks
the systems of the throughput loads; ``--latency-rates none`` leaves the latency mode
out. ``--mapper-workers`` is written into the config only above 1.

Usage: python -m bench.e2e_compare [--events N] [--new-contacts N] [--update-contacts M]
       [--concurrency C] [--partitions P] [--mapper-workers W] [--loads new,updates]
       [--only direct|postgres|sqlite ...] [--direct-batched]
       [--latency-rates 1000,3000 | none] [--latency-seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final, LiteralString

import aiohttp
import psycopg
import yaml

from bench.common import REPO_ROOT, percentile, write_results
from bench.cpu_split import CRMSYNC, profiled
from services.ingest.connectors.hubspot.push import V3_SIGNATURE, V3_TIMESTAMP, v3_signature
from tests.support.kafka import SCRIPT as KAFKA_SCRIPT
from tests.support.kafka import LocalKafka
from tests.support.postgres import SCRIPT as POSTGRES_SCRIPT
from tests.support.postgres import LocalPostgres, fresh_database
from tests.support.services import SERVICES, ServiceProcess, http_get

NAME: Final = "e2e_compare"
# The PostgreSQL instance and Kafka cluster of this benchmark (under var/).
INSTANCE: Final = "e2e-compare"
POSTGRES_PORT: Final = 36432
KAFKA_PORT: Final = 36092
DIRECT_PORT: Final = 36099
PORTS: Final = {"admin": 36179, "ingest": 36180, "mapper": 36181, "writer": 36182}
INGEST_WORKERS: Final = 2

SOURCE: Final = "hubspot"  # also in the SQL below
SECRET: Final = "bench-client-secret-3f9a"
SECRET_ENV: Final = "CRMSYNC_BENCH_HUBSPOT_SECRET"
PROPERTIES: Final = (
    "firstname",
    "lastname",
    "phone",
    "company",
    "jobtitle",
    "lifecyclestage",
    "hs_lead_status",
)
FIRST_OBJECT_ID: Final = 1000
FIRST_EVENT_ID: Final = 10_000_000
# The warm-up before each measured run: contacts of ids of ten digits (the measured
# ones have fewer, which is how the SQL below tells them apart), events of ids of their
# own. A freshly started broker JVM, Python process and database are slower for their
# first seconds than for the rest of their lives; the figures are of the rest.
WARMUP_EVENTS: Final = 30_000
WARMUP_CONTACTS: Final = 10_000
# The first crmsync run also warms the broker JVM, whose compiler threads still used
# 20 µs of CPU per event after 200,000 events: a longer warm-up for it. After 150,000
# the first measured load still cost the broker 42 to 51 µs per event, the second 18
# to 29; after 400,000 the first cost 22 to 26.
FRESH_BROKER_WARMUP_EVENTS: Final = 400_000
FRESH_BROKER_WARMUP_CONTACTS: Final = 50_000
WARMUP_FIRST_OBJECT_ID: Final = 1_000_000_000
WARMUP_FIRST_EVENT_ID: Final = 900_000_000
# The profiled pass's contacts and events (--profile), apart from the others.
PROFILE_FIRST_OBJECT_ID: Final = 2_000_000_000
PROFILE_FIRST_EVENT_ID: Final = 800_000_000
PORTAL_ID: Final = 62515
BATCH: Final = 100
LATENCY_BATCH: Final = 10
RETRIED_STATUSES: Final = frozenset({429, 503})
DEFAULT_RETRY_S: Final = 0.2
LATENCY_CONNECTIONS: Final = 256

POLL_S: Final = 0.5
WARMUP_SETTLE_S: Final = 2.0
FULL_CHECK_PAUSE_S: Final = 1.0
READY_TIMEOUT_S: Final = 120.0
# Waits for the last row: generous, as someone else may be using the machine.
WAIT_BASE_S: Final = 120.0
WAIT_MIN_EVENTS_PER_S: Final = 100.0
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")

SYSTEMS: Final = ("direct", "postgres", "sqlite")
SYSTEM_TITLES: Final = {
    "direct": "direct",
    "postgres": "crmsync, PostgreSQL store",
    "sqlite": "crmsync, SQLite store",
}
LOAD_NAMES: Final = ("new", "updates")
COMPONENTS: Final = (
    "direct handler",
    "ingest",
    "mapper",
    "writer",
    "Kafka broker",
    "PostgreSQL",
    "load generator",
)
ELSEWHERE: Final = "everything else on the machine"

PROGRESS_SQL: Final = (
    "SELECT count(*), coalesce(max(written_at), 0) FROM attributes "
    "WHERE source = 'hubspot' AND length(source_record_id) < 10"
)
VALUES_SQL: Final = (
    "SELECT source_record_id, name, CAST(value AS text) FROM attributes "
    "WHERE source = 'hubspot' AND length(source_record_id) < 10"
)
WRITTEN_SQL: Final = (
    "SELECT source_record_id, written_at FROM attributes "
    "WHERE source = 'hubspot' AND length(source_record_id) < 10"
)
WARMUP_SQL: Final = (
    "SELECT count(*) FROM attributes WHERE source = 'hubspot' AND length(source_record_id) >= 10"
)
DIRECT_SQL: Final = """
SELECT count(*),
       coalesce(sum((SELECT count(*) FROM jsonb_object_keys(attrs))), 0),
       coalesce(extract(epoch FROM max(updated_at)), 0)
FROM direct_profiles WHERE length(hubspot_id) < 10
"""
DIRECT_WARMUP_SQL: Final = """
SELECT coalesce(sum((SELECT count(*) FROM jsonb_object_keys(attrs))), 0)
FROM direct_profiles WHERE length(hubspot_id) >= 10
"""

Query = Callable[[LiteralString], list[tuple[Any, ...]]]
Figures = dict[str, Any]


class BenchError(RuntimeError):
    """A run that did not do what it should; the message says what and where."""


@contextmanager
def step(what: str) -> Iterator[None]:
    """Announce a step and, when it fails, name it: a long run that dies says where."""
    print(f"-- {what}", flush=True)
    try:
        yield
    except BaseException:
        print(f"{NAME}: FAILED while {what}", file=sys.stderr, flush=True)
        raise


# --- the load --------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    name: str
    title: str
    events: int
    contacts: int


@dataclass(frozen=True)
class Workload:
    """A load's request bodies, built before timing, and what a versioned store ends with."""

    load: Load
    bodies: list[bytes]
    final: dict[tuple[str, str], str]
    """(contact id, property) -> the value of its last event."""


def property_change(
    index: int, *, object_id: int, prop: str, occurred_ms: int, first_event: int = FIRST_EVENT_ID
) -> dict[str, Any]:
    """One event as HubSpot's webhooks v3 post it."""
    return {
        "eventId": first_event + index,
        "subscriptionId": 1,
        "portalId": PORTAL_ID,
        "appId": 1,
        "occurredAt": occurred_ms,
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM",
        "propertyName": prop,
        "propertyValue": f"{prop}-{index}",
    }


def build_workload(
    load: Load, *, first_object: int = FIRST_OBJECT_ID, first_event: int = FIRST_EVENT_ID
) -> Workload:
    """Event i changes contact i mod contacts; event times one millisecond apart, in the
    past, so every (contact, property) has exactly one last event."""
    rnd = random.Random(7)
    first_ms = int(time.time() * 1000) - load.events
    events = [
        property_change(
            i,
            object_id=first_object + i % load.contacts,
            prop=rnd.choice(PROPERTIES),
            occurred_ms=first_ms + i,
            first_event=first_event,
        )
        for i in range(load.events)
    ]
    final = {(str(e["objectId"]), e["propertyName"]): e["propertyValue"] for e in events}
    bodies = [json.dumps(events[i : i + BATCH]).encode() for i in range(0, len(events), BATCH)]
    return Workload(load=load, bodies=bodies, final=final)


def latency_bodies(contacts: int) -> list[tuple[list[str], bytes]]:
    """(contact ids, body) per request: new contacts, one event each, LATENCY_BATCH a request."""
    rnd = random.Random(11)
    first_ms = int(time.time() * 1000)
    requests = []
    for start in range(0, contacts, LATENCY_BATCH):
        events = [
            property_change(
                i, object_id=FIRST_OBJECT_ID + i, prop=rnd.choice(PROPERTIES), occurred_ms=first_ms
            )
            for i in range(start, min(start + LATENCY_BATCH, contacts))
        ]
        ids = [str(e["objectId"]) for e in events]
        requests.append((ids, json.dumps(events).encode()))
    return requests


# --- sending ---------------------------------------------------------------------------


def signed_headers(url: str, body: bytes) -> dict[str, str]:
    """X-HubSpot-Signature-v3 of this request, signed now (HubSpot's 5-minute window)."""
    timestamp = str(int(time.time() * 1000))
    signature = v3_signature(SECRET, method="POST", url=url, body=body, timestamp=timestamp)
    return {
        "Content-Type": "application/json",
        V3_TIMESTAMP: timestamp,
        V3_SIGNATURE: signature,
    }


@dataclass
class Sender:
    """Posts signed bodies to one URL, retrying what a webhook sender retries."""

    session: aiohttp.ClientSession
    url: str
    statuses: Counter[int] = field(default_factory=Counter)
    request_s: list[float] = field(default_factory=list)
    """Duration of each answered request (its last attempt)."""

    async def post(self, body: bytes) -> None:
        while True:
            started = time.perf_counter()
            headers = signed_headers(self.url, body)
            async with self.session.post(self.url, data=body, headers=headers) as response:
                text = await response.read()
                self.statuses[response.status] += 1
                if response.status < 300:
                    self.request_s.append(time.perf_counter() - started)
                    return
                if response.status not in RETRIED_STATUSES:
                    raise BenchError(f"POST {self.url} answered {response.status}: {text[:300]!r}")
                retry_s = float(response.headers.get("Retry-After", DEFAULT_RETRY_S))
            await asyncio.sleep(retry_s)

    def figures(self) -> Figures:
        answered = sorted(self.request_s)
        return {
            "request_p50_ms": round(percentile(answered, 0.50) * 1000, 1),
            "request_p99_ms": round(percentile(answered, 0.99) * 1000, 1),
            "statuses": {str(status): n for status, n in sorted(self.statuses.items())},
        }


@dataclass(frozen=True)
class Sent:
    started_wall: float
    """time.time() of the first request."""
    seconds: float
    """First request to last answer."""
    sender: Figures


async def send_all(url: str, bodies: Sequence[bytes], concurrency: int) -> Sent:
    """Every body, ``concurrency`` requests in flight (closed loop: as fast as answered)."""
    pending = iter(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        sender = Sender(session, url)

        async def worker() -> None:
            for body in pending:
                await sender.post(body)

        started_wall = time.time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Sent(started_wall=started_wall, seconds=seconds, sender=sender.figures())


async def send_paced(
    url: str, requests: Sequence[tuple[list[str], bytes]], requests_per_s: float
) -> tuple[dict[str, float], float, Figures]:
    """Each request at its moment on a steady schedule, whatever the answers (open loop).

    Returns each contact's send time (time.time()), the seconds sending took (longer
    than planned when this process could not keep up), and the requests' figures.
    """
    sent_at: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=LATENCY_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        sender = Sender(session, url)
        tasks = []
        begin = time.perf_counter()
        for k, (ids, body) in enumerate(requests):
            delay = begin + k / requests_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.time()
            sent_at.update(dict.fromkeys(ids, now))
            tasks.append(asyncio.create_task(sender.post(body)))
        sending_s = time.perf_counter() - begin
        await asyncio.gather(*tasks)
    return sent_at, sending_s, sender.figures()


# --- CPU from /proc --------------------------------------------------------------------


@dataclass(frozen=True)
class Watched:
    """A process whose CPU counts for a component: with its descendants, or alone."""

    pid: int
    tree: bool = True


@dataclass(frozen=True)
class ProcessTicks:
    ppid: int
    own: int
    """utime + stime, all its threads."""
    reaped: int
    """cutime + cstime: its children that have exited (PostgreSQL's backends, say)."""


def process_table() -> dict[int, ProcessTicks]:
    table: dict[int, ProcessTicks] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # Fields after the command name, which may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = ProcessTicks(
            ppid=int(fields[1]),
            own=int(fields[11]) + int(fields[12]),
            reaped=int(fields[13]) + int(fields[14]),
        )
    return table


def tree_ticks(root: int, table: Mapping[int, ProcessTicks]) -> int:
    """CPU ticks of ``root`` and its descendants, the exited ones included: a child's
    time moves into its parent's reaped time when it exits, so the sum stays whole."""
    children: dict[int, list[int]] = {}
    for pid, ticks in table.items():
        children.setdefault(ticks.ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            total += table[pid].own + table[pid].reaped
            stack.extend(children.get(pid, ()))
    return total


def machine_busy_ticks() -> int:
    """Busy CPU ticks of the whole machine since boot (/proc/stat, all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq + steal


@dataclass(frozen=True)
class CpuSnapshot:
    ticks: dict[str, int]
    machine: int


def cpu_snapshot(components: Mapping[str, Watched]) -> CpuSnapshot:
    table = process_table()
    ticks = {
        name: tree_ticks(w.pid, table) if w.tree else table[w.pid].own
        for name, w in components.items()
    }
    return CpuSnapshot(ticks=ticks, machine=machine_busy_ticks())


def cpu_us_per_event(before: CpuSnapshot, after: CpuSnapshot, events: int) -> dict[str, float]:
    """Per component, and for the rest of the machine, CPU µs per event in the window."""

    def per_event(ticks: int) -> float:
        return round(ticks / CLOCK_TICKS * 1e6 / events, 1)

    spent = {name: after.ticks[name] - before.ticks[name] for name in after.ticks}
    figures = {name: per_event(ticks) for name, ticks in spent.items()}
    figures["total of these"] = per_event(sum(spent.values()))
    figures[ELSEWHERE] = per_event(max(0, after.machine - before.machine - sum(spent.values())))
    return figures


# --- the stores, read as the benchmark waits -------------------------------------------


@contextmanager
def postgres_query(dsn: str) -> Iterator[Query]:
    """One connection for the whole wait: a new one per poll would fork a backend."""
    with psycopg.connect(dsn, autocommit=True) as conn:

        def query(sql: LiteralString) -> list[tuple[Any, ...]]:
            try:
                return conn.execute(sql).fetchall()
            except psycopg.errors.UndefinedTable:
                return []  # the writer has not created its schema yet

        yield query


@contextmanager
def sqlite_query(path: Path) -> Iterator[Query]:
    def query(sql: LiteralString) -> list[tuple[Any, ...]]:
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []  # not created yet, or busy a moment

    yield query


def progress(query: Query) -> tuple[int, int]:
    """(attribute rows of the source, max written_at in µs)."""
    rows = query(PROGRESS_SQL)
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def not_final(query: Query, final: Mapping[tuple[str, str], str]) -> int:
    """How many (contact, property) pairs the store does not hold at their last value."""
    stored = {(r, name): value for r, name, value in query(VALUES_SQL)}
    return sum(
        1
        for key, value in final.items()
        if key not in stored or stored[key] is None or json.loads(stored[key]) != value
    )


def wait_final(query: Query, final: Mapping[tuple[str, str], str], timeout_s: float) -> int:
    """Wait until the store holds every pair's last value; its max written_at (µs)."""
    deadline = time.monotonic() + timeout_s
    rows, wrong = 0, len(final)
    while time.monotonic() < deadline:
        rows, _ = progress(query)
        if rows < len(final):
            time.sleep(POLL_S)
            continue
        wrong = not_final(query, final)
        if wrong == 0:
            return progress(query)[1]
        time.sleep(FULL_CHECK_PAUSE_S)
    raise BenchError(
        f"after {timeout_s:.0f}s the store has {rows} of {len(final)} attribute rows, "
        f"{wrong} not at their last sent value"
    )


def wait_written(query: Query, contacts: int, timeout_s: float) -> dict[str, int]:
    """Contact id -> written_at (µs), once every contact has its row."""
    deadline = time.monotonic() + timeout_s
    rows = 0
    while time.monotonic() < deadline:
        rows, _ = progress(query)
        if rows >= contacts:
            return {str(r): int(written) for r, written in query(WRITTEN_SQL)}
        time.sleep(POLL_S)
    raise BenchError(f"after {timeout_s:.0f}s the store has {rows} of {contacts} contacts")


def wait_timeout_s(events: int) -> float:
    return WAIT_BASE_S + events / WAIT_MIN_EVENTS_PER_S


# --- the systems under test ------------------------------------------------------------


@dataclass(frozen=True)
class Infra:
    """The PostgreSQL server and Kafka broker every run shares."""

    dsn: str
    bootstrap: str
    postgres_pid: int
    kafka_pid: int


def tool_pid(script: Path, name: str) -> int:
    """The main process of a deploy/ tool's instance, from its ``status`` command."""
    result = subprocess.run(
        [sys.executable, str(script), "status", "--name", name],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    )
    found = re.search(r"\bpid (\d+)", result.stdout)
    if found is None:
        raise BenchError(f"{script.name} status --name {name}: no pid in\n{result.stdout}")
    return int(found.group(1))


def check_port_free(port: int) -> None:
    """Fail clearly if something else holds one of this benchmark's ports."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise BenchError(f"port {port} is in use ({exc}); {NAME} needs it") from None


def stop_quietly(what: str, stop: Callable[[], object]) -> None:
    """Stop one thing; a failure is reported, not raised, so the rest still stops."""
    try:
        stop()
    except Exception as exc:
        print(f"{NAME}: could not stop {what}: {exc}", file=sys.stderr, flush=True)


@contextmanager
def infrastructure() -> Iterator[Infra]:
    """A durable PostgreSQL and a Kafka broker of this benchmark's own, deleted afterwards."""
    postgres = LocalPostgres(name=INSTANCE, port=POSTGRES_PORT)
    kafka = LocalKafka(name=INSTANCE, port=KAFKA_PORT)
    try:
        with step(f"starting PostgreSQL on port {POSTGRES_PORT}"):
            dsn = postgres.start()
            postgres_pid = tool_pid(POSTGRES_SCRIPT, INSTANCE)
        with step(f"starting Kafka on port {KAFKA_PORT}"):
            bootstrap = kafka.start()
            kafka_pid = tool_pid(KAFKA_SCRIPT, INSTANCE)
        yield Infra(dsn=dsn, bootstrap=bootstrap, postgres_pid=postgres_pid, kafka_pid=kafka_pid)
    finally:
        stop_quietly("Kafka", lambda: kafka.stop(purge=True))
        stop_quietly("PostgreSQL", lambda: postgres.stop(purge=True))


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def direct_handler(dsn: str, log: Path, *, batched: bool) -> Iterator[subprocess.Popen[bytes]]:
    """bench/direct_handler.py as its own process, until it answers; stopped on exit."""
    check_port_free(DIRECT_PORT)
    command = [sys.executable, "-m", "bench.direct_handler", "--dsn", dsn]
    command += ["--port", str(DIRECT_PORT), "--secret-env", SECRET_ENV]
    command += ["--batched"] if batched else []
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, SECRET_ENV: SECRET},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_answers(f"http://127.0.0.1:{DIRECT_PORT}/readyz", process, log)
        yield process
    finally:
        stop_process(process)


def wait_answers(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the direct handler exited early:\n{log_tail(log)}")
        with suppress(OSError):
            if http_get(url)[0] == 200:
                return
        time.sleep(0.2)
    raise BenchError(f"{url} not answering after {READY_TIMEOUT_S:.0f}s:\n{log_tail(log)}")


def crmsync_config(
    *, infra: Infra, store: dict[str, Any], workdir: Path, partitions: int, mapper_workers: int
) -> dict[str, Any]:
    """The production defaults but for ports, topics and the one HubSpot source."""
    mapper: dict[str, Any] = {
        "http": {"port": PORTS["mapper"]},
        "data_dir": str(workdir / "mapper"),
    }
    if mapper_workers > 1:
        mapper["workers"] = mapper_workers
    topic = {"partitions": partitions}
    return {
        "kafka": {
            "bootstrap_servers": infra.bootstrap,
            "topics": {
                "prefix": f"cmp{uuid.uuid4().hex[:10]}.",
                "changes": topic,
                "fullsync": topic,
                "profile_updates": topic,
            },
        },
        "store": store,
        "services": {
            "ingest": {
                "http": {"port": PORTS["ingest"]},
                "admin": {"port": PORTS["admin"]},
                "workers": INGEST_WORKERS,
                "admin_token": {"env": "CRMSYNC_ADMIN_TOKEN"},
            },
            "mapper": mapper,
            "writer": {"http": {"port": PORTS["writer"]}},
        },
        "sources": {
            SOURCE: {
                "kind": "hubspot",
                "webhooks": {"client_secret": {"env": SECRET_ENV}},
                "mapping": {p: p for p in PROPERTIES},
            }
        },
    }


@dataclass
class CrmsyncStack:
    """ingest, mapper and writer as real processes on one config, on this benchmark's ports."""

    workdir: Path
    services: dict[str, ServiceProcess]

    @classmethod
    def create(cls, workdir: Path, config: dict[str, Any]) -> CrmsyncStack:
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "crmsync.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        services = {
            name: ServiceProcess(
                name=name,
                config_path=config_path,
                log_path=workdir / f"{name}.log",
                port=PORTS[name],
                admin_port=PORTS["admin"],
                env={SECRET_ENV: SECRET},
            )
            for name in SERVICES
        }
        return cls(workdir=workdir, services=services)

    @property
    def url(self) -> str:
        return f"{self.services['ingest'].url}/webhooks/{SOURCE}"

    def start(self) -> None:
        for port in PORTS.values():
            check_port_free(port)
        for service in self.services.values():
            service.start()
        for service in self.services.values():
            service.wait_ready(READY_TIMEOUT_S)

    def components(self) -> dict[str, Watched]:
        return {
            name: Watched(service.process.pid)
            for name, service in self.services.items()
            if service.process is not None
        }

    def log_tails(self) -> str:
        return "\n".join(f"--- {n}.log\n{s.log_tail(20)}" for n, s in self.services.items())

    def stop(self) -> None:
        for name in reversed(SERVICES):
            stop_quietly(name, self.services[name].stop)


@contextmanager
def running(stack: CrmsyncStack) -> Iterator[CrmsyncStack]:
    """The stack started, and stopped however the block ends; log tails on a failure."""
    try:
        stack.start()
        yield stack
    except BaseException:
        print(stack.log_tails(), file=sys.stderr, flush=True)
        raise
    finally:
        stack.stop()


# --- the runs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    concurrency: int
    partitions: int
    mapper_workers: int
    direct_batched: bool
    workdir: Path
    profile: Path | None = None
    """Where py-spy's stacks go when the crmsync runs are profiled (see cpu_split)."""


def load_generator() -> dict[str, Watched]:
    # This process alone: its children are the services, counted on their own.
    return {"load generator": Watched(os.getpid(), tree=False)}


# The brokers a crmsync run has warmed up already (the broker outlives the runs).
_WARM_BROKERS: set[str] = set()


def warmup_workload(events: int, contacts: int) -> Workload:
    return build_workload(
        Load("warm-up", "warm-up", events, contacts),
        first_object=WARMUP_FIRST_OBJECT_ID,
        first_event=WARMUP_FIRST_EVENT_ID,
    )


def warm_up(
    url: str,
    query: Query,
    sql: LiteralString,
    settings: Settings,
    *,
    events: int = WARMUP_EVENTS,
    contacts: int = WARMUP_CONTACTS,
) -> None:
    """Send the warm-up load and wait until the store has written it (not measured)."""
    workload = warmup_workload(events, contacts)
    asyncio.run(send_all(url, workload.bodies, settings.concurrency))
    deadline = time.monotonic() + wait_timeout_s(events)
    while int(query(sql)[0][0]) < len(workload.final):
        if time.monotonic() > deadline:
            raise BenchError(f"the warm-up's {len(workload.final)} rows were not all written")
        time.sleep(POLL_S)
    time.sleep(WARMUP_SETTLE_S)


def run_figures(
    workload: Workload, sent: Sent, last_written_s: float, cpu: dict[str, float]
) -> Figures:
    events = workload.load.events
    end_to_end_s = last_written_s - sent.started_wall
    return {
        "events": events,
        "contacts": workload.load.contacts,
        "accepted_events_per_s": round(events / sent.seconds),
        "end_to_end_events_per_s": round(events / end_to_end_s),
        "accept_s": round(sent.seconds, 2),
        "end_to_end_s": round(end_to_end_s, 2),
        **sent.sender,
        "cpu_us_per_event": cpu,
    }


def run_direct(infra: Infra, workload: Workload, settings: Settings) -> Figures:
    load = workload.load
    dsn = fresh_database(infra.dsn, f"direct_{load.name}")
    log = settings.workdir / f"direct-{load.name}.log"
    with direct_handler(dsn, log, batched=settings.direct_batched) as process:
        components = {
            "direct handler": Watched(process.pid),
            "PostgreSQL": Watched(infra.postgres_pid),
            **load_generator(),
        }
        url = f"http://127.0.0.1:{DIRECT_PORT}/webhooks/hubspot"
        with postgres_query(dsn) as query:
            warm_up(url, query, DIRECT_WARMUP_SQL, settings)
        before = cpu_snapshot(components)
        sent = asyncio.run(send_all(url, workload.bodies, settings.concurrency))
        with postgres_query(dsn) as query:
            contacts, pairs, last_written_s = query(DIRECT_SQL)[0]
        after = cpu_snapshot(components)
    if (contacts, pairs) != (load.contacts, len(workload.final)):
        raise BenchError(
            f"direct table has {contacts} contacts and {pairs} properties; "
            f"expected {load.contacts} and {len(workload.final)}"
        )
    cpu = cpu_us_per_event(before, after, load.events)
    return run_figures(workload, sent, float(last_written_s), cpu)


@contextmanager
def crmsync_store(
    infra: Infra, kind: str, workdir: Path, database: str
) -> Iterator[tuple[dict[str, Any], Query]]:
    """A fresh store of ``kind`` (config, and a query on it for the wait)."""
    if kind == "postgres":
        dsn = fresh_database(infra.dsn, database)
        with postgres_query(dsn) as query:
            yield {"kind": "postgres", "dsn": dsn}, query
    else:
        path = workdir / "profiles.db"
        with sqlite_query(path) as query:
            yield {"kind": "sqlite", "path": str(path)}, query


def crmsync_stack(infra: Infra, store: dict[str, Any], workdir: Path, s: Settings) -> CrmsyncStack:
    config = crmsync_config(
        infra=infra,
        store=store,
        workdir=workdir,
        partitions=s.partitions,
        mapper_workers=s.mapper_workers,
    )
    return CrmsyncStack.create(workdir, config)


def run_crmsync(infra: Infra, workload: Workload, kind: str, settings: Settings) -> Figures:
    load = workload.load
    workdir = settings.workdir / f"{kind}-{load.name}"
    workdir.mkdir(parents=True, exist_ok=True)
    with (
        crmsync_store(infra, kind, workdir, f"crmsync_{load.name}") as (store, query),
        running(crmsync_stack(infra, store, workdir, settings)) as stack,
    ):
        components = {
            **stack.components(),
            "Kafka broker": Watched(infra.kafka_pid),
            **({"PostgreSQL": Watched(infra.postgres_pid)} if kind == "postgres" else {}),
            **load_generator(),
        }
        if infra.bootstrap in _WARM_BROKERS:
            warm_up(stack.url, query, WARMUP_SQL, settings)
        else:
            warm_up(
                stack.url,
                query,
                WARMUP_SQL,
                settings,
                events=FRESH_BROKER_WARMUP_EVENTS,
                contacts=FRESH_BROKER_WARMUP_CONTACTS,
            )
            _WARM_BROKERS.add(infra.bootstrap)
        before = cpu_snapshot(components)
        sent = asyncio.run(send_all(stack.url, workload.bodies, settings.concurrency))
        last_written_us = wait_final(query, workload.final, wait_timeout_s(load.events))
        after = cpu_snapshot(components)
        shares = profile_pass(stack, query, load, settings) if settings.profile else {}
    cpu = cpu_us_per_event(before, after, load.events)
    figures = run_figures(workload, sent, last_written_us / 1e6, cpu)
    if shares:
        figures["cpu_split_us_per_event"] = {
            service: {who: round(share * cpu[service], 1) for who, share in split.items()}
            for service, split in shares.items()
        }
    return figures


def profile_pass(
    stack: CrmsyncStack, query: Query, load: Load, settings: Settings
) -> dict[str, dict[str, float]]:
    """A second load of the measured one's shape, on contacts of its own, under py-spy:
    each service's CPU shares by whose code ran (cpu_split.py)."""
    workload = build_workload(
        load, first_object=PROFILE_FIRST_OBJECT_ID, first_event=PROFILE_FIRST_EVENT_ID
    )
    services = {name: w.pid for name, w in stack.components().items()}
    written_before = int(query(WARMUP_SQL)[0][0])
    assert settings.profile is not None
    with profiled(services, settings.profile, stack.workdir.name) as profiles:
        asyncio.run(send_all(stack.url, workload.bodies, settings.concurrency))
        deadline = time.monotonic() + wait_timeout_s(load.events)
        while int(query(WARMUP_SQL)[0][0]) < written_before + len(workload.final):
            if time.monotonic() > deadline:
                raise BenchError("the profiled load was not all written")
            time.sleep(POLL_S)
    return {p.name: p.shares() for p in profiles}


def run_latency(infra: Infra, rate: int, seconds: float, settings: Settings) -> Figures:
    contacts = int(rate * seconds)
    requests = latency_bodies(contacts)
    workdir = settings.workdir / f"latency-{rate}"
    workdir.mkdir(parents=True, exist_ok=True)
    with (
        crmsync_store(infra, "postgres", workdir, f"crmsync_latency_{rate}") as (store, query),
        running(crmsync_stack(infra, store, workdir, settings)) as stack,
    ):
        warm_up(stack.url, query, WARMUP_SQL, settings)
        sent_at, sending_s, sender = asyncio.run(
            send_paced(stack.url, requests, rate / LATENCY_BATCH)
        )
        written = wait_written(query, contacts, wait_timeout_s(contacts))
    missing = sent_at.keys() - written.keys()
    if missing:
        raise BenchError(f"{len(missing)} contacts sent but not stored, e.g. {min(missing)}")
    latencies = sorted(written[contact] / 1e6 - sent for contact, sent in sent_at.items())
    return {
        "rate_per_s": rate,
        "events": contacts,
        "events_per_request": LATENCY_BATCH,
        "sent_per_s": round(contacts / sending_s),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
        **sender,
    }


def run_load(infra: Infra, load: Load, systems: Sequence[str], settings: Settings) -> Figures:
    workload = build_workload(load)
    runs: dict[str, Figures] = {}
    for system in systems:
        with step(f"load {load.name}: {SYSTEM_TITLES[system]}"):
            if system == "direct":
                runs[system] = run_direct(infra, workload, settings)
            else:
                runs[system] = run_crmsync(infra, workload, system, settings)
        print(f"   {json.dumps({'system': system, **runs[system]})}", flush=True)
    return {"events": load.events, "contacts": load.contacts, "runs": runs, **ratios(runs)}


def ratios(runs: Mapping[str, Figures]) -> Figures:
    if "direct" not in runs:
        return {}
    direct = runs["direct"]["end_to_end_events_per_s"]
    return {
        "end_to_end_crmsync_over_direct": {
            system: round(run["end_to_end_events_per_s"] / direct, 3)
            for system, run in runs.items()
            if system != "direct"
        }
    }


# --- the report ------------------------------------------------------------------------


def markdown_row(label: str, cells: Sequence[str]) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def cpu_rows(runs: Mapping[str, Figures]) -> list[str]:
    names = [*COMPONENTS, "total of these", ELSEWHERE]
    rows = []
    for name in names:
        cells = [runs[s]["cpu_us_per_event"].get(name) for s in runs]
        if any(c is not None for c in cells):
            shown = ["-" if c is None else f"{c:,.0f}" for c in cells]
            rows.append(markdown_row(f"CPU µs/event: {name}", shown))
    return rows


def load_table(load: Load, figures: Figures) -> str:
    runs: dict[str, Figures] = figures["runs"]
    ratio = figures.get("end_to_end_crmsync_over_direct", {})
    lines = [
        f"### {load.title}: {load.events:,} events over {load.contacts:,} contacts",
        "",
        markdown_row("", [SYSTEM_TITLES[s] for s in runs]),
        "|---|" + "---:|" * len(runs),
        markdown_row(
            "accepted events/s", [f"{r['accepted_events_per_s']:,}" for r in runs.values()]
        ),
        markdown_row(
            "end-to-end events/s", [f"{r['end_to_end_events_per_s']:,}" for r in runs.values()]
        ),
    ]
    if ratio:
        cells = ["1.00" if s == "direct" else f"{ratio[s]:.2f}" for s in runs]
        lines.append(markdown_row("end to end, crmsync / direct", cells))
    lines.append(
        markdown_row(
            "request p50 / p99 ms",
            [f"{r['request_p50_ms']} / {r['request_p99_ms']}" for r in runs.values()],
        )
    )
    return "\n".join([*lines, *cpu_rows(runs)])


def split_table(load: Load, figures: Figures) -> str | None:
    """Per profiled crmsync run: each service's CPU per event by whose code ran, and
    the rate crmsync could reach if its own code cost nothing (cpu_split.py)."""
    runs: dict[str, Figures] = figures["runs"]
    lines = []
    for system, run in runs.items():
        split: dict[str, dict[str, float]] | None = run.get("cpu_split_us_per_event")
        if not split:
            continue
        services = list(split)
        owners = sorted(
            {who for per in split.values() for who in per},
            key=lambda who: (who != CRMSYNC, -sum(per.get(who, 0.0) for per in split.values())),
        )
        lines += [
            f"### whose code ran, {load.title}, {SYSTEM_TITLES[system]}: CPU µs/event "
            "(shares from a py-spy profile of a second load of the same shape)",
            "",
            markdown_row("", services),
            "|---|" + "---:|" * len(services),
        ]
        for who in owners:
            lines.append(markdown_row(who, [f"{split[s].get(who, 0.0):.1f}" for s in services]))
        own = sum(per.get(CRMSYNC, 0.0) for per in split.values())
        total = run["cpu_us_per_event"]["total of these"]
        rate = run["end_to_end_events_per_s"]
        floor = total - own
        lines += [
            "",
            f"crmsync's own code: {own:.0f} of {total:.0f} µs/event; everything else "
            f"(broker, PostgreSQL, libraries, load generator): {floor:.0f} µs/event.",
        ]
        if "direct" in runs and floor > 0:
            ceiling = rate * total / floor
            direct = runs["direct"]["end_to_end_events_per_s"]
            lines.append(
                f"With its own code free, at this run's use of the cores: about "
                f"{ceiling:,.0f} events/s, {ceiling / direct:.2f}x the direct handler."
            )
        lines.append("")
    return "\n".join(lines) if lines else None


def latency_table(figures: Sequence[Figures]) -> str:
    lines = [
        "### latency, new contacts, crmsync with the PostgreSQL store",
        "",
        "| rate (events/s) | events | sent at (events/s) | p50 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for f in figures:
        lines.append(
            f"| {f['rate_per_s']:,} | {f['events']:,} | {f['sent_per_s']:,} "
            f"| {f['p50_ms']} | {f['p99_ms']} | {f['max_ms']} |"
        )
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------


def comma_ints(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    return [int(part) for part in text.split(",")]


def comma_loads(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(LOAD_NAMES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown load {', '.join(unknown)}; known: new, updates")
    return names


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per load")
    parser.add_argument("--new-contacts", type=int, default=50_000)
    parser.add_argument("--update-contacts", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--mapper-workers", type=int, default=1)
    parser.add_argument("--loads", type=comma_loads, default=list(LOAD_NAMES))
    parser.add_argument("--only", action="append", choices=SYSTEMS, help="repeatable")
    parser.add_argument("--direct-batched", action="store_true", help="see direct_handler.py")
    parser.add_argument(
        "--latency-rates", type=comma_ints, default=[1000, 3000], help="events/s, or none"
    )
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile each crmsync run with py-spy into DIR and split its CPU by whose "
        "code ran (bench/cpu_split.py); sampling slows the runs a little",
    )
    return parser.parse_args()


def loads(args: argparse.Namespace) -> list[Load]:
    every = {
        "new": Load("new", "new contacts", args.events, args.new_contacts),
        "updates": Load("updates", "updates", args.events, args.update_contacts),
    }
    return [every[name] for name in args.loads]


def run_all(args: argparse.Namespace, workdir: Path) -> tuple[Figures, list[str]]:
    settings = Settings(
        concurrency=args.concurrency,
        partitions=args.partitions,
        mapper_workers=args.mapper_workers,
        direct_batched=args.direct_batched,
        workdir=workdir,
        profile=args.profile,
    )
    systems = [s for s in SYSTEMS if not args.only or s in args.only]
    figures: Figures = {"loads": {}, "latency": []}
    tables = []
    with infrastructure() as infra:
        for load in loads(args):
            figures["loads"][load.name] = run_load(infra, load, systems, settings)
            tables.append(load_table(load, figures["loads"][load.name]))
            split = split_table(load, figures["loads"][load.name])
            if split:
                tables.append(split)
        for rate in args.latency_rates:
            with step(f"latency at {rate:,} events/s"):
                figures["latency"].append(run_latency(infra, rate, args.latency_seconds, settings))
        if figures["latency"]:
            tables.append(latency_table(figures["latency"]))
    return figures, tables


def settings_figures(args: argparse.Namespace) -> Figures:
    return {
        "batch": BATCH,
        "concurrency": args.concurrency,
        "partitions": args.partitions,
        "ingest_workers": INGEST_WORKERS,
        "mapper_workers": args.mapper_workers,
        "direct": "one transaction per request" if args.direct_batched else "autocommit per event",
        "postgres": "durable (fsync, synchronous_commit on), one server for every run",
        "latency_seconds": args.latency_seconds,
    }


def stop_on_sigterm() -> None:
    """SIGTERM (make's, a CI's) unwinds like Ctrl-C, so every started process is stopped."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    args = parse_args()
    stop_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix="crmsync-e2e-compare-"))
    try:
        figures, tables = run_all(args, workdir)
    except BaseException:
        print(f"{NAME}: configs and logs kept in {workdir}", file=sys.stderr, flush=True)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    write_results(NAME, {"settings": settings_figures(args), **figures})
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
