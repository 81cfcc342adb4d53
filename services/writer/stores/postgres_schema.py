"""The PostgreSQL store's schema, as numbered migrations applied in order exactly once.

It has the SQLite store's shape, so both stores hold the same profile model: times
are bigint microseconds since the Unix epoch (UTC), so versions compare as integers;
attribute values are jsonb (NULL marks a clear, kept for its version).

Migration 2 drops the foreign keys from identities, attributes and consents to
profiles. The writer is the only one to write these tables, one batch at a time under
an advisory lock, and keeps them consistent itself: a profile's rows are written with
it and deleted before it, in one transaction (the store tests check after every test
that no row names a profile that is not there). A foreign key cost every row inserted
a lookup of its profile and a row lock on it, logged to the WAL: a third of the time
of a batch of new profiles (bench/postgres_ceiling.py: 6,100 against 9,700 new
profiles/s for the bare merge of the same rows).

Migration 3 adds the outbox: each batch's ProfileChanged messages, in the batch's
transaction, until the writer's relay has put them on Kafka (a row per written part,
services/writer/stores/outbox.py). Batches commit one at a time (the batch lock), so
``seq`` order is commit order.
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
    (
        2,
        """
        ALTER TABLE identities DROP CONSTRAINT IF EXISTS identities_profile_id_fkey;
        ALTER TABLE attributes DROP CONSTRAINT IF EXISTS attributes_profile_id_fkey;
        ALTER TABLE consents DROP CONSTRAINT IF EXISTS consents_profile_id_fkey
        """,
    ),
    (
        3,
        """
        CREATE TABLE profile_outbox (
            seq       bigserial PRIMARY KEY,
            messages  bytea     NOT NULL
        )
        """,
    ),
    (
        4,
        """
        CREATE TABLE destination_pushes (
            destination       text    PRIMARY KEY,
            run_id            text    NOT NULL,
            after_profile_id  bigint  NOT NULL,
            pushed            bigint  NOT NULL,
            total             bigint  NOT NULL,
            started_at        bigint  NOT NULL,
            finished_at       bigint,
            mapping_version   integer NOT NULL
        )
        """,
    ),
    (
        5,
        # Which records assert which identities, and retired identities as history
        # (services/writer/identity_claims.py); before it, every record asserts its own
        # id and every other identity of its profile, at version 0.
        """
        CREATE TABLE source_records (
            source              text   NOT NULL,
            record_id           text   NOT NULL,
            source_modified_at  bigint NOT NULL,
            sequence            bigint NOT NULL,
            identities          text   NOT NULL,
            PRIMARY KEY (source, record_id)
        );
        CREATE TABLE identity_claims (
            kind       text NOT NULL,
            value      text NOT NULL,
            source     text NOT NULL,
            record_id  text NOT NULL,
            PRIMARY KEY (kind, value, source, record_id)
        );
        CREATE INDEX identity_claims_by_record ON identity_claims (source, record_id);
        CREATE TABLE retired_identities (
            profile_id  bigint NOT NULL,
            kind        text   NOT NULL,
            value       text   NOT NULL,
            retired_at  bigint NOT NULL,
            source      text   NOT NULL,
            record_id   text   NOT NULL,
            PRIMARY KEY (profile_id, kind, value)
        );
        CREATE INDEX retired_identities_by_identity ON retired_identities (kind, value);
        CREATE TABLE attribute_alternatives (
            profile_id          bigint  NOT NULL,
            name                text    NOT NULL,
            value               jsonb,
            source              text    NOT NULL,
            source_record_id    text    NOT NULL,
            source_modified_at  bigint  NOT NULL,
            sequence            bigint  NOT NULL,
            mapping_version     integer NOT NULL,
            written_at          bigint  NOT NULL,
            PRIMARY KEY (profile_id, name, source, source_record_id)
        );
        CREATE TABLE profile_separations (
            profile_id  bigint NOT NULL,
            other_id    bigint NOT NULL,
            PRIMARY KEY (profile_id, other_id)
        );
        ALTER TABLE profile_merges ADD COLUMN records text NOT NULL DEFAULT '[]';
        ALTER TABLE profile_merges ADD COLUMN merged_created_at bigint NOT NULL DEFAULT 0;
        ALTER TABLE profile_merges ADD COLUMN split_at bigint;
        INSERT INTO identity_claims
        SELECT i.kind, i.value, split_part(c.value, ':', 1),
               substr(c.value, strpos(c.value, ':') + 1)
        FROM identities c JOIN identities i ON i.profile_id = c.profile_id
        WHERE c.kind = 'crm' AND (i.kind <> 'crm' OR i.value = c.value);
        INSERT INTO source_records
        SELECT c.source, c.record_id, 0, 0, json_agg(json_build_array(c.kind, c.value))::text
        FROM identity_claims c GROUP BY c.source, c.record_id
        """,
    ),
)
