"""The SQLite store's schema, as numbered migrations applied in order exactly once.

Times are integer microseconds since the Unix epoch (UTC), so versions compare as
integers in SQL. Attribute values are JSON text so every FieldValue round-trips.
The outbox (migration 3) holds each batch's ProfileChanged messages until the writer's
relay has put them on Kafka (services/writer/stores/outbox.py); AUTOINCREMENT, so a
``seq`` is never given twice, even after the rows before it were relayed and deleted.
Migration 4 keeps each destination's backfill progress (services/writer/stores/
snapshots.py). Migration 5 keeps which source records assert which identities, and
the identities no record asserts any more as history (services/writer/
identity_claims.py); a store from before it starts with every record asserting its
own id and every other identity of its profile, at version 0 (any change is newer).
A record's row holds its set as one string (``claim_key``), so that a change asserting
what its record asserts already, nearly every change, is told without reading the
set; ``identity_claims`` holds the same by identity, to find who else asserts one.
The same migration keeps what a split needs (services/writer/unmerge.py): each
record's newest write of an attribute another record's value shows
(``attribute_alternatives``, the columns of ``attributes``), the records a merge took
in, and the profiles a split keeps apart.
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        """
        CREATE TABLE profiles (
            id          INTEGER PRIMARY KEY,
            created_at  INTEGER NOT NULL,
            updated_at  INTEGER NOT NULL
        );
        CREATE TABLE identities (
            kind        TEXT    NOT NULL,
            value       TEXT    NOT NULL,
            profile_id  INTEGER NOT NULL REFERENCES profiles (id),
            PRIMARY KEY (kind, value)
        ) WITHOUT ROWID;
        CREATE INDEX identities_by_profile ON identities (profile_id);
        CREATE TABLE attributes (
            profile_id          INTEGER NOT NULL REFERENCES profiles (id),
            name                TEXT    NOT NULL,
            value               TEXT    NOT NULL,
            source              TEXT    NOT NULL,
            source_record_id    TEXT    NOT NULL,
            source_modified_at  INTEGER NOT NULL,
            sequence            INTEGER NOT NULL,
            mapping_version     INTEGER NOT NULL,
            written_at          INTEGER NOT NULL,
            PRIMARY KEY (profile_id, name)
        ) WITHOUT ROWID;
        CREATE TABLE consumer_offsets (
            topic        TEXT    NOT NULL,
            partition    INTEGER NOT NULL,
            next_offset  INTEGER NOT NULL,
            PRIMARY KEY (topic, partition)
        ) WITHOUT ROWID;
        """,
    ),
    (
        2,
        # Provenance-carrying clears (value NULL), consents, detachments, erasure
        # tombstones and merges: the whole profile model.
        """
        CREATE TABLE attributes_v2 (
            profile_id          INTEGER NOT NULL REFERENCES profiles (id),
            name                TEXT    NOT NULL,
            value               TEXT,
            source              TEXT    NOT NULL,
            source_record_id    TEXT    NOT NULL,
            source_modified_at  INTEGER NOT NULL,
            sequence            INTEGER NOT NULL,
            mapping_version     INTEGER NOT NULL,
            written_at          INTEGER NOT NULL,
            PRIMARY KEY (profile_id, name)
        ) WITHOUT ROWID;
        INSERT INTO attributes_v2 SELECT * FROM attributes;
        DROP TABLE attributes;
        ALTER TABLE attributes_v2 RENAME TO attributes;
        CREATE TABLE consents (
            profile_id    INTEGER NOT NULL REFERENCES profiles (id),
            subscription  TEXT    NOT NULL,
            channel       TEXT    NOT NULL,
            status        TEXT    NOT NULL,
            changed_at    INTEGER NOT NULL,
            source        TEXT    NOT NULL,
            written_at    INTEGER NOT NULL,
            PRIMARY KEY (profile_id, subscription, channel)
        ) WITHOUT ROWID;
        CREATE TABLE detached_identities (
            identity_hash       TEXT    PRIMARY KEY,
            source_modified_at  INTEGER NOT NULL,
            sequence            INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE erased_identities (
            identity_hash  TEXT    PRIMARY KEY,
            erased_at      INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE erasures (
            profile_id  INTEGER PRIMARY KEY,
            erased_at   INTEGER NOT NULL
        );
        CREATE TABLE profile_merges (
            merged_id  INTEGER PRIMARY KEY,
            into_id    INTEGER NOT NULL,
            event_id   TEXT    NOT NULL
        );
        """,
    ),
    (
        3,
        """
        CREATE TABLE profile_outbox (
            seq       INTEGER PRIMARY KEY AUTOINCREMENT,
            messages  BLOB    NOT NULL
        );
        """,
    ),
    (
        4,
        """
        CREATE TABLE destination_pushes (
            destination       TEXT    PRIMARY KEY,
            run_id            TEXT    NOT NULL,
            after_profile_id  INTEGER NOT NULL,
            pushed            INTEGER NOT NULL,
            total             INTEGER NOT NULL,
            started_at        INTEGER NOT NULL,
            finished_at       INTEGER,
            mapping_version   INTEGER NOT NULL
        );
        """,
    ),
    (
        5,
        """
        CREATE TABLE source_records (
            source              TEXT    NOT NULL,
            record_id           TEXT    NOT NULL,
            source_modified_at  INTEGER NOT NULL,
            sequence            INTEGER NOT NULL,
            identities          TEXT    NOT NULL,
            PRIMARY KEY (source, record_id)
        ) WITHOUT ROWID;
        CREATE TABLE identity_claims (
            kind       TEXT NOT NULL,
            value      TEXT NOT NULL,
            source     TEXT NOT NULL,
            record_id  TEXT NOT NULL,
            PRIMARY KEY (kind, value, source, record_id)
        ) WITHOUT ROWID;
        CREATE INDEX identity_claims_by_record ON identity_claims (source, record_id);
        CREATE TABLE retired_identities (
            profile_id  INTEGER NOT NULL REFERENCES profiles (id),
            kind        TEXT    NOT NULL,
            value       TEXT    NOT NULL,
            retired_at  INTEGER NOT NULL,
            source      TEXT    NOT NULL,
            record_id   TEXT    NOT NULL,
            PRIMARY KEY (profile_id, kind, value)
        ) WITHOUT ROWID;
        CREATE INDEX retired_identities_by_identity ON retired_identities (kind, value);
        CREATE TABLE attribute_alternatives (
            profile_id          INTEGER NOT NULL REFERENCES profiles (id),
            name                TEXT    NOT NULL,
            value               TEXT,
            source              TEXT    NOT NULL,
            source_record_id    TEXT    NOT NULL,
            source_modified_at  INTEGER NOT NULL,
            sequence            INTEGER NOT NULL,
            mapping_version     INTEGER NOT NULL,
            written_at          INTEGER NOT NULL,
            PRIMARY KEY (profile_id, name, source, source_record_id)
        ) WITHOUT ROWID;
        CREATE TABLE profile_separations (
            profile_id  INTEGER NOT NULL,
            other_id    INTEGER NOT NULL,
            PRIMARY KEY (profile_id, other_id)
        ) WITHOUT ROWID;
        ALTER TABLE profile_merges ADD COLUMN records TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE profile_merges ADD COLUMN merged_created_at INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE profile_merges ADD COLUMN split_at INTEGER;
        INSERT INTO identity_claims
        SELECT i.kind, i.value, substr(c.value, 1, instr(c.value, ':') - 1),
               substr(c.value, instr(c.value, ':') + 1)
        FROM identities c JOIN identities i ON i.profile_id = c.profile_id
        WHERE c.kind = 'crm' AND (i.kind <> 'crm' OR i.value = c.value);
        INSERT INTO source_records
        SELECT c.source, c.record_id, 0, 0, json_group_array(json_array(c.kind, c.value))
        FROM identity_claims c GROUP BY c.source, c.record_id
        """,
    ),
)
