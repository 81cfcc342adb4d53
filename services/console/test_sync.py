"""Test sync (a dry run) of a source: for its first N records, what the mapper would
decide, what would change in the profile store and what each destination would be
sent, with nothing written anywhere. The console's page and API and
``crmsync source test`` use it, so operators can try a source's config on a few
contacts before they activate it.

A test sync:

1. Takes its records: the changes the caller gives (the console passes the last ones
   a webhook-only source sent), else, for a source with an API, the first page(s) of
   a full sync, one page request at a time through the client ingest builds (its
   credentials, rate limit, retries and wait hints), until ``limit`` records. A
   webhook-only source given none has nothing to test with; the report says how to
   get some.
2. Maps each record as the mapper would (its rules compiled as the mapper compiles
   them, ``apply_change`` with no remembered state, so the whole record is mapped): an
   update, no update, or a rejection with the reason the rejected topic would carry.
   A record the connector cannot read is shown as ingest would reject it.
3. Reads the profile store, opened read-only: the profiles owning each update's
   identities (match key's first, as the writer looks them up), and old -> new per
   attribute and consent as the writer's rules would decide (test_sync_store.py).
4. Shapes what each destination would be sent (test_sync_destinations.py).

Nothing is written: no Kafka client is made, the store is opened read-only, the
connector's saved state (cursor, watermark) is neither read nor saved, and the CRM
only gets the reads of a full sync's first pages. Nothing of the records is logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import httpx
import psycopg

from services.console.test_sync_destinations import destination_outcomes
from services.console.test_sync_report import (
    DroppedValue,
    RecordReport,
    RecordsFrom,
    RecordVerdict,
    SyncTestReport,
)
from services.console.test_sync_store import attributes_after, profile_change, store_outcome
from services.core.api_client import ApiError
from services.core.config import Settings, SourceSettings, StoreSettings
from services.core.contracts import (
    ContactChange,
    Origin,
    ProfileUpdate,
    RejectedEvent,
    UpdateOperation,
)
from services.core.http import async_client
from services.core.mapping_settings import ProfileSettings
from services.ingest.connectors.base import Stamp
from services.ingest.registry import build_connectors
from services.ingest.source_api import source_api_client
from services.mapper.rules.errors import RuleError
from services.mapper.rules.expressions import ExpressionError
from services.mapper.rules.mapping import CompiledSource, map_change
from services.mapper.rules.record import apply_change
from services.writer.profiles import identities_of
from services.writer.stores import open_store
from services.writer.stores.base import ProfileStore, StoredProfile, TransientStoreError

log = logging.getLogger(__name__)

MAX_RECORDS: Final = 100
TEST_SYNC_ID: Final = "test-sync"
"""The sync id the pulled changes carry (no full sync of that id ever runs)."""
STORE_FAILURES: Final[tuple[type[Exception], ...]] = (
    TransientStoreError,
    sqlite3.Error,
    psycopg.Error,
    httpx.HTTPError,
    OSError,
)
"""What makes the store unreadable for a test: the report says so and goes on."""


class UnknownSource(ValueError):
    """No source of that name is configured."""


def pulls_from_api(settings: Settings, source: str) -> bool:
    """Whether ``source`` has an API a test sync can pull from (else: webhooks only)."""
    configured = settings.sources.get(source)
    if configured is None:
        raise UnknownSource(f"no source named {source!r}")
    connectors = build_connectors(source, configured)
    return connectors.pull is not None and connectors.api is not None


async def run_test_sync(
    settings: Settings,
    source: str,
    *,
    limit: int,
    records: Sequence[ContactChange] | None = None,
) -> SyncTestReport:
    """The report for the first ``limit`` (1 to ``MAX_RECORDS``) of ``records`` when
    given, else of the source's API; UnknownSource for a source not configured."""
    configured = settings.sources.get(source)
    if configured is None:
        raise UnknownSource(f"no source named {source!r}")
    if not 1 <= limit <= MAX_RECORDS:
        raise ValueError(f"limit is 1 to {MAX_RECORDS}, not {limit}")
    notes: list[str] = []
    # Step 1
    unreadable: list[RejectedEvent] = []
    if records:
        changes = list(records[:limit])
        if any(change.source != source for change in changes):
            raise ValueError(f"every record to test must be of source {source!r}")
        records_from = RecordsFrom.GIVEN
    elif pulls_from_api(settings, source):
        changes, unreadable, problem = await _first_records(source, configured, limit)
        records_from = RecordsFrom.API
        notes.extend([problem] if problem else [])
    else:
        hint = (
            f"{source} only receives webhooks and none was given to test with: send it "
            "a webhook (or have the CRM send one), then test again"
        )
        return SyncTestReport(source, configured.kind, RecordsFrom.NONE, notes=(hint,))
    # Step 2
    ignored_by = _outbound_only(settings).get(source)
    if ignored_by is not None:
        notes.append(
            f"destination {ignored_by} is outbound only: the mapper ignores {source}'s "
            "changes, so none of them sets anything on a profile"
        )
    compiled = CompiledSource.of(source, configured)
    decisions = [
        _decide(change, compiled, settings.profile, ignored_by=ignored_by) for change in changes
    ]
    # Step 3's reads
    updates = [d.update for d in decisions if d.update is not None]
    owners, store_problem = await asyncio.to_thread(_stored_owners, settings.store, updates)
    notes.extend([store_problem] if store_problem else [])
    # Steps 3 and 4, per record: the store's verdicts, then the destinations'
    now = datetime.now(UTC)
    found = iter(owners or [])
    reports = [
        _record_report(
            d,
            next(found) if d.update is not None and owners is not None else None,
            settings=settings,
            now=now,
        )
        for d in decisions
    ]
    reports += [_unreadable_report(source, r) for r in unreadable[: limit - len(changes)]]
    log.info(
        "test sync source=%s from=%s records=%s rejected=%s",
        source,
        records_from.value,
        len(reports),
        sum(1 for r in reports if r.verdict is RecordVerdict.REJECTED),
    )
    return SyncTestReport(source, configured.kind, records_from, tuple(reports), tuple(notes))


async def _first_records(
    source: str, configured: SourceSettings, limit: int
) -> tuple[list[ContactChange], list[RejectedEvent], str | None]:
    """Step 1 for a source with an API: the records of a full sync's first pages (and
    those the connector could not read), and what went wrong if the CRM failed."""
    connectors = build_connectors(source, configured)
    if connectors.pull is None:
        raise ValueError(f"source {source!r} has nothing to pull from")
    changes: list[ContactChange] = []
    unreadable: list[RejectedEvent] = []
    problem = None
    async with async_client() as session:
        api = source_api_client(source, connectors, session=session)
        pages = connectors.pull.pages(
            api, since=None, resume=None, stamp=Stamp(Origin.FULL_SYNC, TEST_SYNC_ID)
        )
        try:
            # One page at a time, and no page after the one that reaches the limit.
            async for page in pages:
                changes.extend(page.changes)
                unreadable.extend(page.rejected)
                if len(changes) + len(unreadable) >= limit:
                    break
        except ApiError as exc:
            problem = f"the CRM's API failed after {len(changes)} records: {exc}"
        finally:
            if isinstance(pages, AsyncGenerator):
                await pages.aclose()
    return changes[:limit], unreadable, problem


@dataclass(frozen=True)
class _Decision:
    """What the mapper would make of one change."""

    change: ContactChange
    verdict: RecordVerdict
    reason: str | None = None
    drops: tuple[DroppedValue, ...] = ()
    update: ProfileUpdate | None = None
    rules: Mapping[str, str] = field(default_factory=dict)


def _decide(
    change: ContactChange,
    compiled: CompiledSource,
    profile: ProfileSettings,
    *,
    ignored_by: str | None,
) -> _Decision:
    """Step 2 for one change."""
    if ignored_by is not None and change.origin is not Origin.WRITE_BACK:
        drop = DroppedValue("*", "outbound_only", f"destination {ignored_by} is outbound only")
        return _Decision(change, RecordVerdict.NO_UPDATE, drops=(drop,))
    try:
        step = apply_change(None, change, source=compiled, profile=profile, incremental=False)
    except (RuleError, ExpressionError) as exc:
        # The reason the mapper's rejected event carries: the refusal in its own words.
        return _Decision(change, RecordVerdict.REJECTED, reason=str(exc))
    drops = tuple(DroppedValue(d.attribute, d.code, d.reason) for d in step.drops)
    if step.update is None:
        return _Decision(change, RecordVerdict.NO_UPDATE, drops=drops)
    update, rules = step.update, {c.attribute: c.rule for c in step.changes}
    if update.operation is UpdateOperation.UPSERT:
        # With no remembered state the mapper sends no clear (it clears only what it
        # set before); the store is the judge here, so the clears come from the rules.
        mapped = map_change(change, source=compiled, profile=profile)
        cleared = mapped.update.cleared if mapped.update is not None else ()
        if cleared:
            update = update._replace(cleared=cleared)
            rules.update({a: mapped.rules[a] for a in cleared if a in mapped.rules})
    return _Decision(change, RecordVerdict.UPDATE, drops=drops, update=update, rules=rules)


def _stored_owners(
    settings: StoreSettings, updates: Sequence[ProfileUpdate]
) -> tuple[list[list[StoredProfile]] | None, str | None]:
    """Step 3's reads, per update the profiles owning its identities (match key's
    first); None and why when the store cannot be read."""
    if not updates:
        return [], None
    try:
        store = open_store(settings, read_only=True)
    except STORE_FAILURES as exc:
        return None, f"the profile store could not be read, so no comparison: {exc}"
    try:
        return [_owners(store, update) for update in updates], None
    except STORE_FAILURES as exc:
        return None, f"the profile store could not be read, so no comparison: {exc}"
    finally:
        store.close()


def _owners(store: ProfileStore, update: ProfileUpdate) -> list[StoredProfile]:
    owners: dict[int, StoredProfile] = {}
    for identity in identities_of(update):
        profile = store.find_profile(identity)
        if profile is not None:
            owners.setdefault(profile.profile_id, profile)
    return list(owners.values())


def _record_report(
    decision: _Decision,
    owners: list[StoredProfile] | None,
    *,
    settings: Settings,
    now: datetime,
) -> RecordReport:
    change, update = decision.change, decision.update
    report = RecordReport(
        record_id=change.record_id,
        operation=change.operation.value,
        verdict=decision.verdict,
        rejected_by="mapper" if decision.verdict is RecordVerdict.REJECTED else None,
        reason=decision.reason,
        identities=tuple(f"{i.kind}:{i.value}" for i in update.identities) if update else (),
        drops=decision.drops,
    )
    if update is None or owners is None:
        return report
    store = store_outcome(update, owners, settings=settings.profile, rule_texts=decision.rules)
    profile = owners[0] if owners else None
    event = profile_change(update, profile, store, now=now)
    destinations = destination_outcomes(
        settings.destinations,
        source=change.source,
        event=event,
        attributes=attributes_after(profile, store),
    )
    return dataclasses.replace(report, store=store, destinations=destinations)


def _unreadable_report(source: str, rejected: RejectedEvent) -> RecordReport:
    """A record the connector could not turn into a change, as ingest rejects it."""
    key = (rejected.key or b"").decode(errors="replace")
    record_id = key.removeprefix(f"{source}:") if key else "?"
    return RecordReport(
        record_id=record_id,
        operation="?",
        verdict=RecordVerdict.REJECTED,
        rejected_by="ingest",
        reason=rejected.reason,
    )


def _outbound_only(settings: Settings) -> dict[str, str]:
    """Sources whose changes the mapper ignores, each with the outbound-only destination
    that makes crmsync the truth for its system."""
    return {
        d.source: name
        for name, d in settings.destinations.items()
        if d.direction == "outbound" and d.source is not None
    }
