"""PostgreSQL ceiling: how fast this machine's server takes the store benchmark's upserts
at all, in the store's layout and in leaner ones, with no store in the way.

bench/writer_store.py compares the PostgreSQL store with a bare COPY-and-merge of the
store's own rows. This asks what any store could reach here. The same workload
(PROFILES new profiles with 2 identities and 6 attributes each, then PROFILES updates of
2 attributes), in batches of BATCH, is written by nothing but psycopg: per batch one
transaction, a COPY of each row set into a temporary staging table and one
``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` per table, the next offset included. No
reads, no decisions, no row built while timed. Three layouts, each in a fresh database
of one durable server (fsync and synchronous_commit on, as in production):

1. "crmsync": the store's schema, applied by the store's migrations; exactly the rows
   the store writes (bench/writer_store.py's baseline).
2. "crmsync_with_foreign_keys": the same rows into the store's schema as its first
   migration left it, with foreign keys from identities, attributes and consents to
   profiles (dropped by the second: they cost a lookup and a row lock on the profile
   for every identity and attribute row inserted).
3. "one_row_per_profile": the leanest layout that still holds the profile model: a
   profile row carrying all its attributes with their provenance as one jsonb document
   (an update merges its attributes in with ``||``), the identities table (unique, and
   indexed by profile) and the offsets; no foreign keys.

The layouts take turns batch by batch: this machine's speed drifts by up to a fifth
within minutes, and taking turns puts all three under the same conditions.

A store cannot upsert faster than the server takes the rows it writes with nothing
else to do: it also reads what it decides on (the owners of every identity, the
versions of the attributes written) and decides in Python. Reported: upserts/s per
layout and phase, and whether each reaches the store target (15,000/s).

Figures are printed and written to bench/results/postgres_ceiling.json.
Usage: python -m bench.postgres_ceiling [--profiles N] [--batch B]
"""

from __future__ import annotations

import argparse
import gc
from typing import Any, Final

import orjson
import psycopg

from bench.common import write_results
from bench.writer_store import (
    PG_TARGET_PER_S,
    PHASES,
    BatchRows,
    Placed,
    TimedBatches,
    Workload,
    bare_batches,
    baseline_batches,
    baseline_rows,
    bench_postgres,
    checkpoint,
    interleaved,
    planned_rows,
    postgres_settings,
    table_digests,
    workload,
)
from services.core.mapping_settings import ProfileSettings
from services.core.versions import to_micros
from services.writer.stores.base import script_statements
from services.writer.stores.postgres import PostgresProfileStore
from services.writer.stores.postgres_schema import MIGRATIONS
from tests.support.postgres import fresh_database, server_version

LAYOUTS: Final = ("crmsync", "crmsync_with_foreign_keys", "one_row_per_profile")

ONE_ROW_SCHEMA: Final = (
    """
    CREATE TABLE profiles (
        id          bigint PRIMARY KEY,
        created_at  bigint NOT NULL,
        updated_at  bigint NOT NULL,
        attributes  jsonb  NOT NULL
    )
    """,
    """
    CREATE TABLE identities (
        kind        text   NOT NULL,
        value       text   NOT NULL,
        profile_id  bigint NOT NULL,
        PRIMARY KEY (kind, value)
    )
    """,
    "CREATE INDEX identities_by_profile ON identities (profile_id)",
    """
    CREATE TABLE consumer_offsets (
        topic        text    NOT NULL,
        partition    integer NOT NULL,
        next_offset  bigint  NOT NULL,
        PRIMARY KEY (topic, partition)
    )
    """,
)
# Per table: the columns copied and the merge from its staging table (bare_batches).
ONE_ROW_TABLES: Final = {
    "profiles": (
        "id, created_at, updated_at, attributes",
        "INSERT INTO profiles SELECT * FROM stage_profiles ON CONFLICT (id) DO UPDATE "
        "SET updated_at = excluded.updated_at, "
        "attributes = profiles.attributes || excluded.attributes",
    ),
    "identities": (
        "kind, value, profile_id",
        "INSERT INTO identities SELECT * FROM stage_identities "
        "ON CONFLICT (kind, value) DO UPDATE SET profile_id = excluded.profile_id",
    ),
    "consumer_offsets": (
        "topic, partition, next_offset",
        "INSERT INTO consumer_offsets SELECT * FROM stage_consumer_offsets "
        "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
    ),
}


def schema_version_1(dsn: str) -> None:
    """The store's first migration alone, foreign keys included."""
    _version, script = MIGRATIONS[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in script_statements(script):
            conn.execute(statement.encode())


def one_row_of(rows: dict[str, list[tuple[Any, ...]]], placed: Placed) -> None:
    """The rows of the one-row-per-profile layout for an update (RowsOf): each attribute
    with the provenance the store keeps for it."""
    one, profile_id, now = placed.update, placed.profile_id, placed.now
    if placed.new:
        rows["identities"].extend((i.kind, i.value, profile_id) for i in one.identities)
    document = {
        name: {
            "value": value,
            "source": one.source,
            "source_record_id": one.record_id,
            "source_modified_at": to_micros(one.source_modified_at),
            "sequence": one.sequence,
            "mapping_version": one.mapping_version,
            "written_at": now,
        }
        for name, value in one.attributes.items()
    }
    rows["profiles"].append((profile_id, placed.created, now, orjson.dumps(document).decode()))


def one_row_batches(
    conn: psycopg.Connection[Any], planned: dict[str, list[BatchRows]]
) -> TimedBatches:
    for statement in ONE_ROW_SCHEMA:
        conn.execute(statement)
    return bare_batches(conn, planned, ONE_ROW_TABLES)


def layouts_hold_the_workload(dsns: dict[str, str], work: Workload) -> bool:
    """Whether every layout ended with the same profiles: the two crmsync ones row for
    row, the lean one with every profile's identities and its attributes merged (the
    update's values beside the new profile's others)."""
    if table_digests(dsns["crmsync"]) != table_digests(dsns["crmsync_with_foreign_keys"]):
        return False
    profiles = len(work["new"])
    last = work["update"][-1]
    expected = {**work["new"][-1].attributes, **last.attributes}
    with psycopg.connect(dsns["one_row_per_profile"]) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM profiles), (SELECT count(*) FROM identities)"
        ).fetchone()
        row = conn.execute("SELECT attributes FROM profiles WHERE id = %s", (profiles,)).fetchone()
    if counts != (profiles, profiles * len(last.identities)) or row is None:
        return False
    return {name: one["value"] for name, one in row[0].items()} == expected


def ceiling_figures(work: Workload, batch: int) -> dict[str, Any]:
    planned = baseline_rows(work, batch)
    lean = planned_rows(work, batch, ONE_ROW_TABLES, one_row_of)
    gc.freeze()  # the precomputed rows are no heap a store holds (see bench.writer_store)
    with bench_postgres() as server_dsn:
        version = server_version(server_dsn)
        dsns = {layout: fresh_database(server_dsn, f"ceiling_{layout}") for layout in LAYOUTS}
        schema = PostgresProfileStore(postgres_settings(dsns["crmsync"]), profile=ProfileSettings())
        try:
            schema.migrate()
        finally:
            schema.close()
        schema_version_1(dsns["crmsync_with_foreign_keys"])
        checkpoint(server_dsn)
        conns = {layout: psycopg.connect(dsn, autocommit=True) for layout, dsn in dsns.items()}
        try:
            times = interleaved(
                baseline_batches(conns["crmsync"], planned),
                baseline_batches(conns["crmsync_with_foreign_keys"], planned),
                one_row_batches(conns["one_row_per_profile"], lean),
            )
        finally:
            for conn in conns.values():
                conn.close()
        held = layouts_hold_the_workload(dsns, work)

    print(f"PostgreSQL: {version}, durable settings")
    print(f"every layout holds the whole workload: {'yes' if held else 'NO'}")
    figures: dict[str, Any] = {
        "postgres_server": f"{version}, durable (fsync, synchronous_commit on)",
        "layouts_hold_the_workload": held,
    }
    for layout, layout_times in zip(LAYOUTS, times, strict=True):
        for phase in PHASES:
            rate = layout_times.rate(phase)
            meets = rate >= PG_TARGET_PER_S
            print(
                f"{layout}, {phase}: {rate:,.0f} upserts/s bare "
                f"({layout_times.seconds[phase]:.1f} s); "
                f">= {PG_TARGET_PER_S:,}/s: {'yes' if meets else 'no'}"
            )
            figures |= {
                f"{layout}_{phase}_bare_upserts_per_s": round(rate),
                f"{layout}_{phase}_reaches_{PG_TARGET_PER_S}_per_s": meets,
            }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()
    work = workload(args.profiles)
    figures: dict[str, Any] = {
        "reproduce": f"python -m bench.postgres_ceiling --profiles {args.profiles} "
        f"--batch {args.batch}",
        "profiles": args.profiles,
        "batch": args.batch,
    }
    figures |= ceiling_figures(work, args.batch)
    write_results("postgres_ceiling", figures)


if __name__ == "__main__":
    main()
