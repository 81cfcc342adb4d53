"""Writer store benchmark: profile upserts per second into the stores, and writer memory.

1. PostgreSQL store: a real, durable server (fsync and synchronous_commit on; see
   tests/support/postgres.py) on port 19650, a fresh database. Two phases, each
   PROFILES ProfileUpdates applied with ``apply_batch`` in batches of BATCH (offsets in
   the same transaction, as the writer does):
   "new": each update creates a profile (email and CRM identity, 6 attributes);
   "update": each of those profiles again, later, with 2 changed attributes (first
   name and score: the mapper forwards only what changed).
   The updates are built before timing; upserts/s per phase and overall are reported.
2. Baseline: the same rows the store writes (computed beforehand in Python), written
   to another fresh database with the same schema by nothing but psycopg: per batch,
   one transaction with a COPY of each non-empty row set into a temporary staging
   table and one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` per table. Only the
   per-batch work is timed. Store and baseline take turns, a batch each, on the same
   server: this machine's speed drifts by up to a fifth within minutes, and taking
   turns puts both under the same conditions, so their ratio holds. Reported: baseline
   upserts/s per phase, and store/baseline (targets: store >= 0.5 x baseline and
   >= 15,000/s per phase). Both databases' tables are then compared row for row, so
   the baseline did the store's writes.
3. SQLite store: the same workload on a file in a temporary directory (target
   >= 10,000/s per phase).
4. Writer memory (``--skip-memory`` leaves it out): a Kafka broker (bench_broker) and
   the real writer process on the default SQLite store and batch settings; first
   SHORT_TOPIC, then a further LONG_TOPIC_MORE ProfileUpdates (new profiles) are put
   straight on the profile-updates topic. The writer's resident memory is sampled
   from /proc throughout; reported are its peak once it has consumed the short topic
   and once it has consumed the long one (flat: within 15%), its memory once caught
   up, and the consume rate of each stage, timed from the first message produced until
   the writer's committed offsets reach the end. (librdkafka prefetches the backlog up
   to queued.max.messages.kbytes per partition, which the writer caps at 8 MiB; the
   short topic, about 40 MB, already fills that prefetch, so what the long one adds
   is what the writer itself keeps.)

The prebuilt updates and baseline rows are frozen out of the garbage collector's
sight (``gc.freeze``) before timing: the writer never holds such a heap.

Figures are printed and written to bench/results/writer_store.json.
Usage: python -m bench.writer_store [--profiles N] [--batch B] [--skip-memory]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from bench.common import bench_broker, produce_all, write_results
from bench.mapper_throughput import RssSampler, wait_caught_up
from services.core.codecs import load_contracts
from services.core.config import PostgresStoreSettings
from services.core.contracts import FieldValue, ProfileUpdate
from services.core.mapping_settings import ProfileSettings
from services.core.versions import to_micros
from services.writer.identity_claims import claim_key
from services.writer.stores.base import BatchReport, ProfileStore
from services.writer.stores.postgres import PostgresProfileStore
from services.writer.stores.rows import ATTRIBUTE_COLUMNS
from services.writer.stores.sqlite import SqliteProfileStore
from tests.stores.changes import at, update
from tests.support.postgres import LocalPostgres, fresh_database, server_version
from tests.support.services import Stack

BENCH_POSTGRES_PORT: Final = 19650  # below the ephemeral port range
SOURCE: Final = "hubspot"
OFFSETS_TOPIC: Final = "bench"
PHASES: Final = ("new", "update")
# Source times of the two phases (seconds after T0) and the batches' write times.
SOURCE_T: Final = {"new": 1.0, "update": 2.0}
WRITTEN_AT: Final = {"new": at(1_000_000), "update": at(2_000_000)}
PG_TARGET_PER_S: Final = 15_000
PG_TARGET_RATIO: Final = 0.5
SQLITE_TARGET_PER_S: Final = 10_000
SHORT_TOPIC: Final = 150_000
LONG_TOPIC_MORE: Final = 450_000
FLAT_WITHIN: Final = 0.15
# What a young broker answers while the group's coordinator is still being placed.
COORDINATOR_NOT_YET: Final = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
)
COMPARED_TABLES: Final = {
    "profiles": "id",
    "identities": "kind, value",
    "attributes": "profile_id, name",
    "consumer_offsets": "topic, partition",
    "source_records": "source, record_id",
    "identity_claims": "kind, value, source, record_id",
}

Workload = dict[str, list[ProfileUpdate]]


# --- the workload -------------------------------------------------------------------


def new_profile(index: int) -> ProfileUpdate:
    attributes: dict[str, FieldValue] = {
        "first_name": f"First{index}",
        "last_name": f"Last{index}",
        "city": "Copenhagen",
        "country": "DK",
        "score": index % 100,
        "customer_type": "key account" if index % 2 else "smb",
    }
    return update(
        SOURCE,
        str(index),
        t=SOURCE_T["new"],
        email=f"person{index}@example.com",
        attributes=attributes,
    )


def changed_profile(index: int) -> ProfileUpdate:
    attributes: dict[str, FieldValue] = {"first_name": f"First{index}v2", "score": index % 100 + 1}
    return update(
        SOURCE,
        str(index),
        t=SOURCE_T["update"],
        email=f"person{index}@example.com",
        attributes=attributes,
    )


def workload(profiles: int) -> Workload:
    return {
        "new": [new_profile(i) for i in range(profiles)],
        "update": [changed_profile(i) for i in range(profiles)],
    }


def batches(updates: Sequence[ProfileUpdate], size: int) -> Iterator[Sequence[ProfileUpdate]]:
    for start in range(0, len(updates), size):
        yield updates[start : start + size]


# --- the stores ---------------------------------------------------------------------


@dataclass
class PhaseTimes:
    seconds: dict[str, float] = field(default_factory=dict)
    upserts: dict[str, int] = field(default_factory=dict)

    def rate(self, phase: str) -> float:
        return self.upserts[phase] / self.seconds[phase]

    def overall(self) -> float:
        return sum(self.upserts.values()) / sum(self.seconds.values())


def no_report(_report: BatchReport) -> None:
    pass


TimedBatches = Iterator[tuple[str, int, float]]
"""Per batch as it is applied: its phase, its updates and the seconds it took."""


def store_batches(store: ProfileStore, work: Workload, batch: int) -> TimedBatches:
    offset = 0
    for phase in PHASES:
        for chunk in batches(work[phase], batch):
            offset += len(chunk)
            started = time.perf_counter()
            report = store.apply_batch(
                updates=chunk,
                next_offsets={(OFFSETS_TOPIC, 0): offset},
                written_at=WRITTEN_AT[phase],
                before_commit=no_report,
            )
            yield phase, len(chunk), time.perf_counter() - started
            if report.rejections or report.dropped_updates or report.merges or report.drops:
                raise RuntimeError(f"the store did more than upsert: {report}")


def total(timed: TimedBatches) -> PhaseTimes:
    return interleaved(timed)[0]


def interleaved(*runs: TimedBatches) -> list[PhaseTimes]:
    """Runs of the same batches, a batch of each in turn: every run meets the same
    moments of the machine (its speed drifts by a fifth within minutes), so their
    ratio holds even when the absolute figures move."""
    times = [PhaseTimes() for _ in runs]
    for steps in zip(*runs, strict=True):
        for run_times, (phase, upserts, seconds) in zip(times, steps, strict=True):
            run_times.seconds[phase] = run_times.seconds.get(phase, 0.0) + seconds
            run_times.upserts[phase] = run_times.upserts.get(phase, 0) + upserts
    return times


def postgres_settings(dsn: str) -> PostgresStoreSettings:
    return PostgresStoreSettings(kind="postgres", dsn=dsn)


# --- the baseline -------------------------------------------------------------------


@dataclass
class BatchRows:
    """The rows the store writes for one batch, per table, in the table's column order."""

    rows: dict[str, list[tuple[Any, ...]]]
    updates: int


BASELINE_TABLES: Final = {
    "profiles": ("id, created_at, updated_at", ("id",)),
    "identities": ("kind, value, profile_id", ("kind", "value")),
    "attributes": (ATTRIBUTE_COLUMNS, ("profile_id", "name")),
    "consumer_offsets": ("topic, partition, next_offset", ("topic", "partition")),
    "source_records": (
        "source, record_id, source_modified_at, sequence, identities",
        ("source", "record_id"),
    ),
    "identity_claims": (
        "kind, value, source, record_id",
        ("kind", "value", "source", "record_id"),
    ),
}


def merge_statement(table: str) -> str:
    columns, key = BASELINE_TABLES[table]
    updated = [c for c in (c.strip() for c in columns.split(",")) if c not in key]
    assignments = ", ".join(f"{c} = excluded.{c}" for c in updated)
    action = f"DO UPDATE SET {assignments}" if assignments else "DO NOTHING"
    return (
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM stage_{table} "  # noqa: S608
        f"ON CONFLICT ({', '.join(key)}) {action}"
    )


@dataclass(frozen=True)
class Placed:
    """An update and where it lands: its profile (created by it, or earlier) and the
    write time of its batch."""

    update: ProfileUpdate
    profile_id: int
    created: int
    now: int
    new: bool


RowsOf = Callable[[dict[str, list[tuple[Any, ...]]], Placed], None]
"""Adds to a batch's rows, per table, those of one placed update."""


def planned_rows(
    work: Workload, batch: int, tables: Iterable[str], rows_of: RowsOf
) -> dict[str, list[BatchRows]]:
    """Per phase and batch, the rows ``rows_of`` gives for each update (profiles
    numbered from 1 in the order they are created, as the store numbers them) and the
    next offset."""
    profile_ids: dict[str, int] = {}
    created: dict[int, int] = {}
    offset = 0
    planned: dict[str, list[BatchRows]] = {}
    for phase in PHASES:
        now = to_micros(WRITTEN_AT[phase])
        planned[phase] = []
        for chunk in batches(work[phase], batch):
            rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in tables}
            for one in chunk:
                profile_id = profile_ids.get(one.match_key)
                new = profile_id is None
                if profile_id is None:
                    profile_id = profile_ids[one.match_key] = len(profile_ids) + 1
                    created[profile_id] = now
                rows_of(rows, Placed(one, profile_id, created[profile_id], now, new))
            offset += len(chunk)
            rows["consumer_offsets"].append((OFFSETS_TOPIC, 0, offset))
            planned[phase].append(BatchRows(rows, len(chunk)))
    return planned


def store_rows(rows: dict[str, list[tuple[Any, ...]]], placed: Placed) -> None:
    """The rows the store writes for an update (RowsOf)."""
    one, profile_id, now = placed.update, placed.profile_id, placed.now
    if placed.new:
        rows["identities"].extend((i.kind, i.value, profile_id) for i in one.identities)
        # The record's claim: what it asserts (services/writer/identity_claims.py).
        rows["identity_claims"].extend(
            (i.kind, i.value, one.source, one.record_id) for i in one.identities if i.kind != "crm"
        )
        # Its claim's version: only a change of its identities moves it.
        rows["source_records"].append(
            (
                one.source,
                one.record_id,
                to_micros(one.source_modified_at),
                one.sequence,
                claim_key(one.identities),
            )
        )
    rows["profiles"].append((profile_id, placed.created, now))
    rows["attributes"].extend(
        (
            profile_id,
            name,
            json.dumps(value),
            one.source,
            one.record_id,
            to_micros(one.source_modified_at),
            one.sequence,
            one.mapping_version,
            now,
        )
        for name, value in one.attributes.items()
    )


def baseline_rows(work: Workload, batch: int) -> dict[str, list[BatchRows]]:
    """Per phase and batch, the rows the store writes (checked after the run)."""
    return planned_rows(work, batch, BASELINE_TABLES, store_rows)


def bare_batches(
    conn: psycopg.Connection[Any],
    planned: dict[str, list[BatchRows]],
    tables: Mapping[str, tuple[str, str]],
) -> TimedBatches:
    """``planned`` written by nothing but psycopg: per batch one transaction, and per
    table with rows a COPY into a temporary staging table ``stage_<table>`` and its
    merge. ``tables`` gives per table the columns copied and the merge statement."""
    for table in tables:
        conn.execute(
            f"CREATE TEMP TABLE stage_{table} (LIKE {table} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
        )
    for phase in PHASES:
        for batch in planned[phase]:
            started = time.perf_counter()
            with conn.transaction(), conn.cursor() as cursor:
                for table, rows in batch.rows.items():
                    if not rows:
                        continue
                    columns, merge = tables[table]
                    with cursor.copy(f"COPY stage_{table} ({columns}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    cursor.execute(merge)
            yield phase, batch.updates, time.perf_counter() - started


def baseline_batches(
    conn: psycopg.Connection[Any], planned: dict[str, list[BatchRows]]
) -> TimedBatches:
    tables = {
        table: (BASELINE_TABLES[table][0], merge_statement(table)) for table in BASELINE_TABLES
    }
    return bare_batches(conn, planned, tables)


def checkpoint(dsn: str) -> None:
    """Flush the WAL of what ran before, so it does not weigh on the next timed run."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def table_digests(dsn: str) -> dict[str, tuple[int, str]]:
    """Per table, its row count and an md5 of all its rows in key order."""
    digests: dict[str, tuple[int, str]] = {}
    with psycopg.connect(dsn) as conn:
        for table, key in COMPARED_TABLES.items():
            row = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY {key}), '')) "  # noqa: S608
                f"FROM {table} t"
            ).fetchone()
            assert row is not None
            digests[table] = (int(row[0]), str(row[1]))
    return digests


# --- PostgreSQL and SQLite ----------------------------------------------------------


@contextmanager
def bench_postgres() -> Iterator[str]:
    """A durable local server, stopped and purged afterwards; yields its DSN."""
    server = LocalPostgres(name="bench", port=BENCH_POSTGRES_PORT)
    try:
        yield server.start()
    finally:
        server.stop(purge=True)


def postgres_figures(work: Workload, batch: int) -> dict[str, Any]:
    planned = baseline_rows(work, batch)
    gc.freeze()  # as the workload (see main)
    with bench_postgres() as server_dsn:
        version = server_version(server_dsn)
        store_dsn = fresh_database(server_dsn, "bench_store")
        baseline_dsn = fresh_database(server_dsn, "bench_baseline")
        store = PostgresProfileStore(postgres_settings(store_dsn), profile=ProfileSettings())
        schema = PostgresProfileStore(postgres_settings(baseline_dsn), profile=ProfileSettings())
        try:
            store.migrate()
            schema.migrate()
            checkpoint(server_dsn)
            with psycopg.connect(baseline_dsn, autocommit=True) as baseline:
                store_times, baseline_times = interleaved(
                    store_batches(store, work, batch), baseline_batches(baseline, planned)
                )
        finally:
            store.close()
            schema.close()
        same_rows = table_digests(store_dsn) == table_digests(baseline_dsn)

    figures: dict[str, Any] = {
        "postgres_server": f"{version}, durable (fsync, synchronous_commit on)"
    }
    print(f"PostgreSQL: {version}, durable settings")
    for phase in PHASES:
        store_rate = store_times.rate(phase)
        baseline_rate = baseline_times.rate(phase)
        ratio = store_rate / baseline_rate
        meets_rate = store_rate >= PG_TARGET_PER_S
        meets_ratio = ratio >= PG_TARGET_RATIO
        print(
            f"PostgreSQL store, {phase}: {store_times.upserts[phase]} upserts at "
            f"{store_rate:,.0f}/s ({store_times.seconds[phase]:.1f} s); baseline "
            f"{baseline_rate:,.0f}/s ({baseline_times.seconds[phase]:.1f} s); "
            f"store/baseline {ratio:.2f}"
        )
        print(
            f"  target >= {PG_TARGET_PER_S:,}/s: {'met' if meets_rate else 'NOT met'}; "
            f"target >= {PG_TARGET_RATIO} x baseline: {'met' if meets_ratio else 'NOT met'}"
        )
        figures |= {
            f"postgres_store_{phase}_upserts_per_s": round(store_rate),
            f"postgres_baseline_{phase}_upserts_per_s": round(baseline_rate),
            f"postgres_store_to_baseline_{phase}": round(ratio, 2),
            f"postgres_{phase}_meets_{PG_TARGET_PER_S}_per_s": meets_rate,
            f"postgres_{phase}_meets_{PG_TARGET_RATIO}_x_baseline": meets_ratio,
        }
    print(
        f"PostgreSQL overall: store {store_times.overall():,.0f}/s, "
        f"baseline {baseline_times.overall():,.0f}/s"
    )
    print(f"baseline wrote exactly the store's rows: {'yes' if same_rows else 'NO'}")
    figures |= {
        "postgres_store_overall_upserts_per_s": round(store_times.overall()),
        "postgres_baseline_overall_upserts_per_s": round(baseline_times.overall()),
        "baseline_rows_identical_to_store": same_rows,
    }
    return figures


def sqlite_figures(work: Workload, batch: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        store = SqliteProfileStore(Path(workdir) / "profiles.db", profile=ProfileSettings())
        try:
            store.migrate()
            times = total(store_batches(store, work, batch))
        finally:
            store.close()
    figures: dict[str, Any] = {}
    for phase in PHASES:
        rate = times.rate(phase)
        meets = rate >= SQLITE_TARGET_PER_S
        print(
            f"SQLite store, {phase}: {times.upserts[phase]} upserts at {rate:,.0f}/s "
            f"({times.seconds[phase]:.1f} s); target >= {SQLITE_TARGET_PER_S:,}/s: "
            f"{'met' if meets else 'NOT met'}"
        )
        figures |= {
            f"sqlite_store_{phase}_upserts_per_s": round(rate),
            f"sqlite_{phase}_meets_{SQLITE_TARGET_PER_S}_per_s": meets,
        }
    print(f"SQLite overall: {times.overall():,.0f}/s")
    figures["sqlite_store_overall_upserts_per_s"] = round(times.overall())
    return figures


# --- writer memory ------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    """The process's resident memory now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def caught_up(bootstrap: str, group: str, topic: str, timeout_s: float) -> float:
    """wait_caught_up, asking again while the group coordinator is not settled yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            remaining = max(1.0, deadline - time.monotonic())
            return wait_caught_up(bootstrap, group, topic, timeout_s=remaining)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() not in COORDINATOR_NOT_YET or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def encoded(indexes: range) -> list[tuple[bytes, bytes]]:
    codec = load_contracts().profile_update
    return [(one.key, codec.encode(one)) for one in map(new_profile, indexes)]


def memory_figures() -> dict[str, Any]:
    short = encoded(range(SHORT_TOPIC))
    more = encoded(range(SHORT_TOPIC, SHORT_TOPIC + LONG_TOPIC_MORE))
    with bench_broker() as bootstrap, tempfile.TemporaryDirectory() as workdir:
        stack = Stack(bootstrap=bootstrap, workdir=Path(workdir))
        topic, group = stack.topic("profile-updates"), stack.topic("writer")
        writer = stack["writer"]
        try:
            stack.start("writer")  # it creates the topics
            topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
            if topic not in topics.topics:
                raise RuntimeError(f"the writer did not create {topic}")
            assert writer.process is not None
            sampler = RssSampler(writer.process.pid)
            rates: list[float] = []
            peaks: list[float] = []
            settled: list[float] = []
            for messages in (short, more):
                started = time.monotonic()
                produce_all(bootstrap, topic, messages)
                done = caught_up(bootstrap, group, topic, timeout_s=1800)
                rates.append(len(messages) / (done - started))
                peaks.append(sampler.peak_kib / 1024)
                settled.append(rss_mib(writer.process.pid))
            sampler.stop()
        finally:
            stack.stop()
    growth = peaks[1] / peaks[0] - 1
    flat = growth <= FLAT_WITHIN
    long_topic = SHORT_TOPIC + LONG_TOPIC_MORE
    print(
        f"writer (SQLite store): {SHORT_TOPIC} updates at {rates[0]:,.0f}/s, "
        f"peak RSS {peaks[0]:.0f} MiB, {settled[0]:.0f} MiB once caught up"
    )
    print(
        f"writer (SQLite store): a further {LONG_TOPIC_MORE} at {rates[1]:,.0f}/s, "
        f"peak RSS over all {long_topic} {peaks[1]:.0f} MiB ({growth:+.0%}), "
        f"{settled[1]:.0f} MiB once caught up; "
        f"flat (within {FLAT_WITHIN:.0%}): {'yes' if flat else 'NO'}"
    )
    return {
        "writer_short_topic_updates": SHORT_TOPIC,
        "writer_short_topic_updates_per_s": round(rates[0]),
        "writer_peak_rss_mib_after_short_topic": round(peaks[0]),
        "writer_rss_mib_caught_up_short_topic": round(settled[0]),
        "writer_long_topic_updates": long_topic,
        "writer_further_updates_per_s": round(rates[1]),
        "writer_peak_rss_mib_after_long_topic": round(peaks[1]),
        "writer_rss_mib_caught_up_long_topic": round(settled[1]),
        "writer_rss_growth_percent": round(growth * 100, 1),
        "writer_memory_flat": flat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    work = workload(args.profiles)
    # The prebuilt workload is millions of objects the writer never holds (it decodes
    # one batch at a time); left to the garbage collector, each full collection would
    # walk them all and charge the store for it (about a fifth of its time).
    gc.freeze()
    figures: dict[str, Any] = {
        "reproduce": f"python -m bench.writer_store --profiles {args.profiles} "
        f"--batch {args.batch}" + (" --skip-memory" if args.skip_memory else ""),
        "profiles": args.profiles,
        "batch": args.batch,
        "attributes_per_new_profile": len(work["new"][0].attributes),
        "attributes_per_update": len(work["update"][0].attributes),
    }
    figures |= postgres_figures(work, args.batch)
    figures |= sqlite_figures(work, args.batch)
    if not args.skip_memory:
        figures |= memory_figures()
    write_results("writer_store", figures)


if __name__ == "__main__":
    main()
