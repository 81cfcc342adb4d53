"""The console's index: what it shows, kept in an SQLite database of its own.

Reading a rejection or a contact's history straight from Kafka needs a consumer and
Avro; the console instead keeps, from the rejected, audit, changes, profile-changes
and barrier topics, the rows its pages look up by email, record or reason. Each batch
of rows is written in one transaction together with the topic positions it came
from, so a restart resumes exactly where the index stopped: no row twice, none
missed. Rows older than the retention are deleted; the daily counts are kept.

The index is the console's own (not the profile store's) so that it works the same
over every store kind, and its writes never compete with the writer's.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    rejected_at TEXT NOT NULL,
    stage TEXT NOT NULL, source TEXT, destination TEXT, reason TEXT NOT NULL,
    event_id TEXT, record_id TEXT, email TEXT,
    origin_topic TEXT, origin_partition INTEGER, origin_offset INTEGER,
    key BLOB, value BLOB, truncated INTEGER NOT NULL DEFAULT 0,
    replayed_at TEXT,
    UNIQUE (topic, partition, offset)
);
CREATE INDEX IF NOT EXISTS rejections_by_source ON rejections (source, rejected_at);
CREATE INDEX IF NOT EXISTS rejections_by_email ON rejections (email);
CREATE INDEX IF NOT EXISTS rejections_by_record ON rejections (record_id);
CREATE INDEX IF NOT EXISTS rejections_by_event ON rejections (event_id);
CREATE TABLE IF NOT EXISTS timeline (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    at TEXT NOT NULL, kind TEXT NOT NULL,
    source TEXT, record_id TEXT, email TEXT, profile_id INTEGER, event_id TEXT,
    detail TEXT NOT NULL,
    UNIQUE (topic, partition, offset)
);
CREATE INDEX IF NOT EXISTS timeline_by_record ON timeline (source, record_id);
CREATE INDEX IF NOT EXISTS timeline_by_email ON timeline (email);
CREATE INDEX IF NOT EXISTS timeline_by_profile ON timeline (profile_id);
CREATE INDEX IF NOT EXISTS timeline_by_at ON timeline (at);
CREATE INDEX IF NOT EXISTS timeline_by_event ON timeline (event_id);
CREATE TABLE IF NOT EXISTS daily (
    source TEXT NOT NULL, day TEXT NOT NULL, counter TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (source, day, counter)
);
CREATE TABLE IF NOT EXISTS controls (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    source TEXT NOT NULL, sync_id TEXT NOT NULL, kind TEXT NOT NULL, at TEXT NOT NULL,
    records_total INTEGER, reason TEXT,
    UNIQUE (topic, partition, offset)
);
CREATE INDEX IF NOT EXISTS controls_by_source ON controls (source, at);
"""

RECEIVED: Final = "received"
"""A daily counter: real-time changes a source sent (webhooks, polls)."""
APPLIED: Final = "applied"
"""A daily counter: changes of a source's records the store took."""
REJECTED: Final = "rejected"
"""A daily counter: a source's (or destination's) rejected events."""
INVALID: Final = "invalid"
"""A daily counter: values the mapper dropped as invalid (``on_invalid: drop_field``)
while applying the rest of their change."""


@dataclass(frozen=True)
class Where:
    """A message's place, which makes its row unique (indexing it twice is a no-op)."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class RejectionRow:
    where: Where
    rejected_at: datetime
    stage: str
    reason: str
    source: str | None = None
    destination: str | None = None
    event_id: str | None = None
    record_id: str | None = None
    email: str | None = None
    origin_topic: str | None = None
    origin_partition: int | None = None
    origin_offset: int | None = None
    key: bytes | None = None
    value: bytes | None = None
    truncated: bool = False


@dataclass(frozen=True)
class TimelineRow:
    where: Where
    at: datetime
    kind: str
    """received, decided, rejected, written, merged."""
    detail: dict[str, Any]
    source: str | None = None
    record_id: str | None = None
    email: str | None = None
    profile_id: int | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class ControlRow:
    where: Where
    source: str
    sync_id: str
    kind: str
    at: datetime
    records_total: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Count:
    source: str
    day: str
    counter: str
    count: int = 1


Row = RejectionRow | TimelineRow | ControlRow | Count


@dataclass(frozen=True)
class RejectionFilter:
    source: str | None = None
    destination: str | None = None
    stage: str | None = None
    reason: str | None = None
    """Rejections whose reason contains this text."""
    email: str | None = None
    record_id: str | None = None
    replayed: bool | None = None


class ConsoleIndex:
    """The index's database; one writer (the indexer), any number of readers."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        self._db.close()

    # --- writing ------------------------------------------------------------------

    def positions(self) -> dict[tuple[str, int], int]:
        rows = self._db.execute("SELECT topic, partition, next_offset FROM positions")
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    def write(self, rows: Iterable[Row], positions: dict[tuple[str, int], int]) -> None:
        """``rows`` and the positions after them, in one transaction."""
        with self._transaction() as db:
            for row in rows:
                _insert(db, row)
            db.executemany(
                "INSERT INTO positions (topic, partition, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [(t, p, o) for (t, p), o in positions.items()],
            )

    def expire(self, now: datetime, retention: timedelta) -> int:
        """Delete rejections and timeline rows older than ``retention``."""
        cutoff = _iso(now - retention)
        with self._transaction() as db:
            gone = db.execute("DELETE FROM rejections WHERE rejected_at < ?", (cutoff,)).rowcount
            gone += db.execute("DELETE FROM timeline WHERE at < ?", (cutoff,)).rowcount
            gone += db.execute("DELETE FROM controls WHERE at < ?", (cutoff,)).rowcount
        return gone

    def mark_replayed(self, ids: Sequence[int], at: datetime) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE rejections SET replayed_at = ? WHERE id = ?",
                [(_iso(at), i) for i in ids],
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.rollback()
            raise
        self._db.commit()

    # --- reading ------------------------------------------------------------------

    def rejections(
        self, where: RejectionFilter, *, limit: int = 100, offset: int = 0
    ) -> list[sqlite3.Row]:
        sql, params = _rejection_query(where)
        return self._db.execute(
            f"SELECT * FROM rejections WHERE {sql} ORDER BY id DESC LIMIT ? OFFSET ?",  # noqa: S608
            (*params, limit, offset),
        ).fetchall()

    def count_rejections(self, where: RejectionFilter) -> int:
        sql, params = _rejection_query(where)
        row = self._db.execute(f"SELECT count(*) FROM rejections WHERE {sql}", params).fetchone()  # noqa: S608
        return int(row[0])

    def rejection(self, rejection_id: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM rejections WHERE id = ?", (rejection_id,)
        ).fetchone()
        return row

    def reasons(self, source: str | None = None) -> list[tuple[str, int]]:
        """The most frequent rejection reasons (their text up to the first ':')."""
        rows = self._db.execute(
            "SELECT reason FROM rejections WHERE (? IS NULL OR source = ?)", (source, source)
        )
        counts: dict[str, int] = {}
        for row in rows:
            head = str(row["reason"]).split(":", 1)[0]
            counts[head] = counts.get(head, 0) + 1
        return sorted(counts.items(), key=lambda item: -item[1])[:20]

    def timeline(
        self, *, emails: Sequence[str], records: Sequence[tuple[str, str]], profiles: Sequence[int]
    ) -> list[sqlite3.Row]:
        """Every row about these emails, records or profiles, oldest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if emails:
            clauses.append(f"email IN ({_marks(emails)})")
            params.extend(emails)
        for source, record_id in records:
            clauses.append("(source = ? AND record_id = ?)")
            params.extend((source, record_id))
        if profiles:
            clauses.append(f"profile_id IN ({_marks(profiles)})")
            params.extend(profiles)
        if not clauses:
            return []
        return self._db.execute(
            f"SELECT * FROM timeline WHERE {' OR '.join(clauses)} ORDER BY at, id",  # noqa: S608
            params,
        ).fetchall()

    def decisions(self, event_ids: Sequence[str]) -> dict[str, sqlite3.Row]:
        """The mapper's decided row of each of ``event_ids`` the index holds."""
        found: dict[str, sqlite3.Row] = {}
        wanted = sorted(set(event_ids))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            for row in self._db.execute(
                f"SELECT * FROM timeline WHERE kind = 'decided' AND event_id IN ({_marks(chunk)})",  # noqa: S608
                chunk,
            ):
                found[row["event_id"]] = row
        return found

    def linked(self, *, email: str | None, record: tuple[str, str] | None) -> Linked:
        """Everything the index ties to an email or a record: the emails, records and
        profiles seen together with it (in a change, a decision or a profile change)."""
        linked = Linked()
        if email is not None:
            linked.emails.add(email)
        if record is not None:
            linked.records.add(record)
        # Two rounds find the profile of an email and then that profile's records.
        for _ in range(2):
            for row in self.timeline(
                emails=sorted(linked.emails),
                records=sorted(linked.records),
                profiles=sorted(linked.profiles),
            ):
                if row["email"]:
                    linked.emails.add(row["email"])
                if row["source"] and row["record_id"]:
                    linked.records.add((row["source"], row["record_id"]))
                if row["profile_id"] is not None:
                    linked.profiles.add(int(row["profile_id"]))
        return linked

    def daily(self, day: str) -> dict[tuple[str, str], int]:
        rows = self._db.execute("SELECT source, counter, count FROM daily WHERE day = ?", (day,))
        return {(r["source"], r["counter"]): r["count"] for r in rows}

    def totals(self) -> dict[tuple[str, str], int]:
        rows = self._db.execute(
            "SELECT source, counter, sum(count) AS total FROM daily GROUP BY source, counter"
        )
        return {(r["source"], r["counter"]): int(r["total"]) for r in rows}

    def last_at(self, kind: str, source: str) -> str | None:
        row = self._db.execute(
            "SELECT max(at) FROM timeline WHERE kind = ? AND source = ?", (kind, source)
        ).fetchone()
        return str(row[0]) if row and row[0] else None

    def rejections_since(self, since: datetime) -> dict[str, int]:
        """Per source (or destination), rejections at or after ``since``."""
        rows = self._db.execute(
            "SELECT coalesce(destination, source, '') AS who, count(*) AS n FROM rejections "
            "WHERE rejected_at >= ? GROUP BY who",
            (_iso(since),),
        )
        return {r["who"]: int(r["n"]) for r in rows}

    def received_since(self, since: datetime) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT source, count(*) AS n FROM timeline WHERE kind = 'received' AND at >= ? "
            "GROUP BY source",
            (_iso(since),),
        )
        return {r["source"]: int(r["n"]) for r in rows}

    def dead_lettered(self, event_ids: Sequence[str]) -> dict[str, set[str]]:
        """Per profile change (its event id), the destinations that dead-lettered it."""
        if not event_ids:
            return {}
        # Only placeholders are formatted in; the ids are parameters.
        sql = (
            "SELECT event_id, destination FROM rejections WHERE destination IS NOT NULL "  # noqa: S608
            f"AND event_id IN ({_marks(event_ids)})"
        )
        rows = self._db.execute(sql, list(event_ids))
        found: dict[str, set[str]] = {}
        for row in rows:
            found.setdefault(row["event_id"], set()).add(row["destination"])
        return found

    def lags(self, source: str, *, last: int = 100) -> list[float]:
        """Seconds from receiving each of the source's last changes to the store
        taking it (the changes the store took, newest first)."""
        rows = self._db.execute(
            "SELECT w.at AS written, min(r.at) AS received FROM timeline w "
            "JOIN timeline r ON r.event_id = w.event_id AND r.kind = 'received' "
            "WHERE w.kind = 'written' AND w.source = ? "
            "GROUP BY w.id ORDER BY w.id DESC LIMIT ?",
            (source, last),
        )
        return [
            (
                datetime.fromisoformat(r["written"]) - datetime.fromisoformat(r["received"])
            ).total_seconds()
            for r in rows
        ]

    def latest_received(self, source: str, limit: int) -> list[sqlite3.Row]:
        """The source's last ``limit`` changes received, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM timeline WHERE kind = 'received' AND source = ? "
            "ORDER BY at DESC, id DESC LIMIT ?",
            (source, limit),
        ).fetchall()
        return list(reversed(rows))

    def controls_since(self, since: datetime) -> list[sqlite3.Row]:
        """Every source's full-sync and pause controls at or after ``since``."""
        return self._db.execute(
            "SELECT * FROM controls WHERE at >= ? ORDER BY at, id", (_iso(since),)
        ).fetchall()

    def dead_letters_since(self, since: datetime) -> dict[str, int]:
        """Per destination, changes dead-lettered at or after ``since``."""
        rows = self._db.execute(
            "SELECT destination, count(*) AS n FROM rejections "
            "WHERE destination IS NOT NULL AND rejected_at >= ? GROUP BY destination",
            (_iso(since),),
        )
        return {r["destination"]: int(r["n"]) for r in rows}

    def controls(self, source: str, *, limit: int = 20) -> list[sqlite3.Row]:
        return self._db.execute(
            "SELECT * FROM controls WHERE source = ? ORDER BY at DESC, id DESC LIMIT ?",
            (source, limit),
        ).fetchall()


@dataclass
class Linked:
    emails: set[str]
    records: set[tuple[str, str]]
    profiles: set[int]

    def __init__(self) -> None:
        self.emails = set()
        self.records = set()
        self.profiles = set()


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" for _ in values)


def _rejection_query(where: RejectionFilter) -> tuple[str, tuple[Any, ...]]:
    clauses = ["1 = 1"]
    params: list[Any] = []
    for column, value in (
        ("source", where.source),
        ("destination", where.destination),
        ("stage", where.stage),
        ("email", where.email),
        ("record_id", where.record_id),
    ):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if where.reason:
        clauses.append("instr(reason, ?) > 0")
        params.append(where.reason)
    if where.replayed is not None:
        clauses.append("replayed_at IS NOT NULL" if where.replayed else "replayed_at IS NULL")
    return " AND ".join(clauses), tuple(params)


def _insert(db: sqlite3.Connection, row: Row) -> None:
    if isinstance(row, Count):
        db.execute(
            "INSERT INTO daily (source, day, counter, count) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (source, day, counter) DO UPDATE SET count = count + excluded.count",
            (row.source, row.day, row.counter, row.count),
        )
    elif isinstance(row, RejectionRow):
        db.execute(
            "INSERT OR IGNORE INTO rejections (topic, partition, offset, rejected_at, stage, "
            "source, destination, reason, event_id, record_id, email, origin_topic, "
            "origin_partition, origin_offset, key, value, truncated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *_place(row.where),
                _iso(row.rejected_at),
                row.stage,
                row.source,
                row.destination,
                row.reason,
                row.event_id,
                row.record_id,
                row.email,
                row.origin_topic,
                row.origin_partition,
                row.origin_offset,
                row.key,
                row.value,
                int(row.truncated),
            ),
        )
    elif isinstance(row, TimelineRow):
        db.execute(
            "INSERT OR IGNORE INTO timeline (topic, partition, offset, at, kind, source, "
            "record_id, email, profile_id, event_id, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *_place(row.where),
                _iso(row.at),
                row.kind,
                row.source,
                row.record_id,
                row.email,
                row.profile_id,
                row.event_id,
                json.dumps(row.detail, default=str, ensure_ascii=False),
            ),
        )
    elif isinstance(row, ControlRow):
        db.execute(
            "INSERT OR IGNORE INTO controls (topic, partition, offset, source, sync_id, kind, "
            "at, records_total, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *_place(row.where),
                row.source,
                row.sync_id,
                row.kind,
                _iso(row.at),
                row.records_total,
                row.reason,
            ),
        )
    else:
        raise TypeError(f"not an index row: {row!r}")


def _place(where: Where) -> tuple[str, int, int]:
    return where.topic, where.partition, where.offset


def _iso(moment: datetime) -> str:
    """UTC with microseconds always, so that the text sorts as the time does."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
