"""The PostgreSQL store's schema, as numbered migrations applied in order exactly once.

It has the SQLite store's shape, so both stores hold the same profile model: times
are bigint microseconds since the Unix epoch (UTC), so versions compare as integers;
attribute values are jsonb (NULL marks a clear, kept for its version).
"""

from __future__ import annotations

from typing import Final

MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        """
        CREATE TABLE profiles (
            id          bigint PRIMARY KEY,
            created_at  bigint NOT NULL,
            updated_at  bigint NOT NULL
        );
        CREATE TABLE identities (
            kind        text   NOT NULL,
            value       text   NOT NULL,
            profile_id  bigint NOT NULL REFERENCES profiles (id),
            PRIMARY KEY (kind, value)
        );
        CREATE INDEX identities_by_profile ON identities (profile_id);
        CREATE TABLE attributes (
            profile_id          bigint  NOT NULL REFERENCES profiles (id),
            name                text    NOT NULL,
            value               jsonb,
            source              text    NOT NULL,
            source_record_id    text    NOT NULL,
            source_modified_at  bigint  NOT NULL,
            sequence            bigint  NOT NULL,
            mapping_version     integer NOT NULL,
            written_at          bigint  NOT NULL,
            PRIMARY KEY (profile_id, name)
        );
        CREATE TABLE consents (
            profile_id    bigint NOT NULL REFERENCES profiles (id),
            subscription  text   NOT NULL,
            channel       text   NOT NULL,
            status        text   NOT NULL,
            changed_at    bigint NOT NULL,
            source        text   NOT NULL,
            written_at    bigint NOT NULL,
            PRIMARY KEY (profile_id, subscription, channel)
        );
        CREATE TABLE detached_identities (
            identity_hash       text   PRIMARY KEY,
            source_modified_at  bigint NOT NULL,
            sequence            bigint NOT NULL
        );
        CREATE TABLE erased_identities (
            identity_hash  text   PRIMARY KEY,
            erased_at      bigint NOT NULL
        );
        CREATE TABLE erasures (
            profile_id  bigint PRIMARY KEY,
            erased_at   bigint NOT NULL
        );
        CREATE TABLE profile_merges (
            merged_id  bigint PRIMARY KEY,
            into_id    bigint NOT NULL,
            event_id   text   NOT NULL
        );
        CREATE TABLE consumer_offsets (
            topic        text    NOT NULL,
            partition    integer NOT NULL,
            next_offset  bigint  NOT NULL,
            PRIMARY KEY (topic, partition)
        );
        """,
    ),
)
