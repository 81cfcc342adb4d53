"""What each console page shows, as plain data: the HTML pages render it and the
JSON API (and the CLI through it) returns it as it is.

A page's data comes from four places: ingest's admin API (polls, full syncs,
pauses), the console's index (counts, rejections, timelines), the profile store
(mapping versions, backfills) and Kafka (each destination's place in the profile
changes). One that cannot be reached is said on the page; the rest still shows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from services.console.health import (
    DestinationFacts,
    Health,
    SourceFacts,
    destination_health,
    source_health,
)
from services.console.history import history, merged_into
from services.console.index import (
    APPLIED,
    INVALID,
    RECEIVED,
    REJECTED,
    ConsoleIndex,
    RejectionFilter,
)
from services.console.pushes import PushRunner
from services.console.test_sync import pulls_from_api, run_test_sync
from services.console.test_sync_report import report_json
from services.core.admin_updates import SPLIT_SOURCE, send_update, split_update
from services.core.config import Settings
from services.core.contracts import ContactChange, Operation, Origin
from services.core.http import TRANSIENT, async_client
from services.ingest.registry import build_connectors
from services.outbound.backlog import destination_places
from services.writer.stores import open_sql_store, open_store

log = logging.getLogger(__name__)

HOUR: Final = timedelta(hours=1)
INGEST_TIMEOUT_S: Final = 10.0


class IngestAdmin:
    """The console's calls to ingest's admin API, with the admin token."""

    def __init__(self, settings: Settings) -> None:
        ingest = settings.services.ingest
        token = ingest.admin_token.resolve() if ingest.admin_token else None
        url = settings.services.console.ingest_url or ingest.admin.local_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = async_client(timeout_s=INGEST_TIMEOUT_S, base_url=url, headers=headers)

    async def close(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        """(status, body); status 0 when ingest did not answer."""
        try:
            response = await self._http.request(method, path)
        except TRANSIENT as exc:
            return 0, {"error": f"not reachable: {str(exc) or type(exc).__name__}"}
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {"error": response.text[:200]}
        return response.status_code, body if isinstance(body, dict) else {"body": body}


class Views:
    def __init__(
        self,
        *,
        settings: Settings,
        index: ConsoleIndex,
        ingest: IngestAdmin,
        pushes: PushRunner,
    ) -> None:
        self._settings = settings
        self._index = index
        self._ingest = ingest
        self._pushes = pushes

    # --- the overview -------------------------------------------------------------

    async def overview(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        status, older, places = await asyncio.gather(
            self._ingest.call("GET", "/status"),
            asyncio.to_thread(self._older_profiles),
            asyncio.to_thread(self._destination_places),
        )
        today = self._index.daily(now.date().isoformat())
        totals = self._index.totals()
        rejected = self._index.rejections_since(now - HOUR)
        received = self._index.received_since(now - HOUR)
        code, body = status
        ingest_error = None if code == 200 else body.get("error", f"answered {code}")
        sources = []
        for name, source in self._settings.sources.items():
            info = (body.get("sources") or {}).get(name, {}) if code == 200 else {}
            facts = SourceFacts(
                paused_since=(info.get("paused") or {}).get("since"),
                poll=info.get("poll"),
                fullsync=info.get("fullsync"),
                received_last_hour=received.get(name, 0),
                rejected_last_hour=rejected.get(name, 0),
                last_received_at=self._index.last_at("received", name),
                last_applied_at=self._index.last_at("written", name),
                older_profiles=older.get(name, {}).get(source.mapping_version, 0),
                mapping_version=source.mapping_version,
                ingest_error=ingest_error,
            )
            health = source_health(facts)
            sources.append(
                {
                    "name": name,
                    "kind": source.kind,
                    "health": _health(health),
                    "paused": facts.paused_since is not None,
                    "paused_since": facts.paused_since,
                    "webhook": info.get("webhook"),
                    "poll": facts.poll,
                    "fullsync": facts.fullsync,
                    "mapping_version": source.mapping_version,
                    "older_profiles": facts.older_profiles,
                    "last_success": _last_success(facts),
                    "today": _counts(today, name),
                    "total": _counts(totals, name),
                    "errors_last_hour": facts.rejected_last_hour,
                    "lag": _lag(self._index.lags(name)),
                }
            )
        destinations = []
        places_by_name, kafka_error = places
        for name, destination in self._settings.destinations.items():
            place = places_by_name.get(name)
            waiting = (
                sum(max(0, end - at) for at, end in place.values()) if place is not None else None
            )
            runtime = ((body.get("destinations") or {}).get(name) or {}).get("paused")
            facts_d = DestinationFacts(
                paused=destination.paused,
                paused_since=(runtime or {}).get("since"),
                waiting=waiting,
                dead_letters_last_hour=rejected.get(name, 0),
                kafka_error=kafka_error,
            )
            destinations.append(
                {
                    "name": name,
                    "kind": destination.kind,
                    "source": destination.source,
                    "health": _health(destination_health(facts_d)),
                    "paused": destination.paused or runtime is not None,
                    "paused_in_config": destination.paused,
                    "waiting": waiting,
                    "dead_letters_last_hour": facts_d.dead_letters_last_hour,
                    "dead_letters_today": today.get((name, REJECTED), 0),
                }
            )
        return {"at": now.isoformat(), "sources": sources, "destinations": destinations}

    async def source(self, name: str) -> dict[str, Any] | None:
        if name not in self._settings.sources:
            return None
        overview = await self.overview()
        summary = next(s for s in overview["sources"] if s["name"] == name)
        runs = [dict(r) for r in self._index.controls(name)]
        errors = [
            _rejection(r) for r in self._index.rejections(RejectionFilter(source=name), limit=20)
        ]
        return {
            **summary,
            "runs": runs,
            "errors": errors,
            "reasons": self._index.reasons(name),
            "can_full_sync": self._can_full_sync(name),
        }

    async def destination(self, name: str) -> dict[str, Any] | None:
        if name not in self._settings.destinations:
            return None
        overview = await self.overview()
        summary = next(d for d in overview["destinations"] if d["name"] == name)
        dead = [
            _rejection(r)
            for r in self._index.rejections(RejectionFilter(destination=name), limit=20)
        ]
        push = await asyncio.to_thread(self._push, name, running=self._pushes.running(name))
        return {**summary, "dead_letters": dead, "backfill": push}

    # --- records and rejections -----------------------------------------------------

    async def record(self, query: str) -> dict[str, Any]:
        """A contact's timeline, by email or ``source:record_id``."""
        query = query.strip()
        email = query.lower() if "@" in query else None
        record = None
        if email is None:
            source, _, record_id = query.partition(":")
            if not record_id:
                return {"query": query, "error": "search by email or by source:record_id"}
            record = (source, record_id)
        linked = self._index.linked(email=email, record=record)
        rows = self._index.timeline(
            emails=sorted(linked.emails),
            records=sorted(linked.records),
            profiles=sorted(linked.profiles),
        )
        places, _error = await asyncio.to_thread(self._destination_places)
        dead = self._index.dead_lettered(
            [json.loads(r["detail"]).get("event_id", "") for r in rows if r["kind"] == "written"]
        )
        events = [self._event(row, places, dead) for row in rows]
        return {
            "query": query,
            "emails": sorted(linked.emails),
            "records": [f"{s}:{r}" for s, r in sorted(linked.records)],
            "profiles": sorted(linked.profiles),
            "events": events,
        }

    def profile_history(self, profile_id: int) -> dict[str, Any]:
        """Every identity and attribute change of a profile (and of those merged into
        it) with its source and rule (services/console/history.py)."""
        index = self._index
        ids = merged_into(
            profile_id, lambda some: index.timeline(emails=[], records=[], profiles=some)
        )
        rows = index.timeline(emails=[], records=[], profiles=ids)
        written = [r for r in rows if r["kind"] == "written"]
        decisions = index.decisions([r["event_id"] for r in written if r["event_id"]])
        splits = {r["record_id"] for r in written if r["source"] == SPLIT_SOURCE}
        merges = [
            {
                "merged_profile_id": merged,
                "into_profile_id": r["profile_id"],
                "at": r["at"],
                "split": str(merged) in splits,
            }
            for r in written
            for merged in json.loads(r["detail"]).get("merged_profile_ids", [])
        ]
        return {
            "profile_id": profile_id,
            "profiles": ids,
            "merges": merges,
            "entries": history(rows, decisions, self._policy_of),
        }

    async def split(self, merged_id: int) -> str:
        """Send the split of profile ``merged_id``; its event id once Kafka has it."""
        update = split_update(merged_id)
        await asyncio.to_thread(send_update, self._settings, update, what="split")
        return update.event_id

    def _policy_of(self, attribute: str) -> str:
        policy = self._settings.profile.attributes.get(attribute)
        if policy is None:
            return "last_writer_wins"
        if policy.policy == "owner_only":
            return f"owner_only ({policy.owner})"
        if policy.policy == "source_priority":
            return f"source_priority ({', '.join(policy.priority)})"
        return policy.policy

    def rejections(
        self, where: RejectionFilter, *, limit: int = 100, offset: int = 0
    ) -> dict[str, Any]:
        rows = self._index.rejections(where, limit=limit, offset=offset)
        return {
            "filter": {k: v for k, v in asdict(where).items() if v is not None},
            "count": self._index.count_rejections(where),
            "rejections": [_rejection(r) for r in rows],
            "reasons": self._index.reasons(where.source),
            "sources": sorted(self._settings.sources),
        }

    def rejection(self, rejection_id: int) -> dict[str, Any] | None:
        row = self._index.rejection(rejection_id)
        return _rejection(row, full=True) if row is not None else None

    async def test_sync(self, name: str, limit: int) -> dict[str, Any] | None:
        """What ``limit`` records of the source would change, writing nothing: pulled
        from its API, or (webhooks only) the last changes it sent, from the index."""
        if name not in self._settings.sources:
            return None
        records = None
        if not pulls_from_api(self._settings, name):
            records = [_received_change(row) for row in self._index.latest_received(name, limit)]
        report = await run_test_sync(self._settings, name, limit=limit, records=records)
        return {"name": name, "limit": limit, **report_json(report)}

    # --- helpers --------------------------------------------------------------------

    def _event(
        self,
        row: sqlite3.Row,
        places: Mapping[str, Mapping[int, tuple[int, int]]],
        dead: Mapping[str, set[str]],
    ) -> dict[str, Any]:
        detail = json.loads(row["detail"])
        event = {
            "at": row["at"],
            "kind": row["kind"],
            "source": row["source"],
            "record_id": row["record_id"],
            "profile_id": row["profile_id"],
            "event_id": row["event_id"],
            "detail": detail,
        }
        if row["kind"] == "written":
            dead_for = dead.get(detail.get("event_id", ""), set())
            event["destinations"] = self._sent(row["source"], detail, places, dead_for)
        return event

    def _sent(
        self,
        source: str | None,
        detail: Mapping[str, Any],
        places: Mapping[str, Mapping[int, tuple[int, int]]],
        dead: set[str],
    ) -> dict[str, str]:
        """Per destination, what became of one committed profile change (``dead``:
        the destinations that dead-lettered it)."""
        outcomes: dict[str, str] = {}
        for name, destination in self._settings.destinations.items():
            if destination.source is not None and destination.source == source:
                outcomes[name] = "not sent: the change came from it"
            elif name in dead:
                outcomes[name] = "dead-lettered"
            elif name not in places:
                outcomes[name] = "unknown (Kafka not readable)"
            else:
                at = places[name].get(int(detail.get("partition", -1)), (0, 0))[0]
                past = int(detail.get("offset", -1)) < at
                outcomes[name] = "delivered" if past else "waiting"
        return outcomes

    def _older_profiles(self) -> dict[str, dict[int, int]]:
        """Per source, profiles by mapping version: {source: {version: count}} where
        the count at the current version is of profiles written under older ones."""
        try:
            store = open_store(self._settings.store, read_only=True)
        except Exception as exc:  # the store not created yet, or not reachable
            log.info("console: store not readable: %s", exc)
            return {}
        try:
            written = store.profiles_by_mapping_version()
        finally:
            store.close()
        older: dict[str, dict[int, int]] = {}
        for name, source in self._settings.sources.items():
            current = source.mapping_version
            count = sum(n for v, n in written.get(name, {}).items() if v < current)
            older[name] = {current: count}
        return older

    def _destination_places(
        self,
    ) -> tuple[dict[str, dict[int, tuple[int, int]]], str | None]:
        if not self._settings.destinations:
            return {}, None
        try:
            return destination_places(self._settings), None
        except Exception as exc:  # Kafka down: the page says so
            return {}, str(exc)

    def _push(self, name: str, *, running: bool) -> dict[str, Any] | None:
        try:
            store = open_sql_store(self._settings.store, read_only=True)
        except Exception:
            return None
        if store is None:
            return None
        try:
            progress = store.push_progress(name)
        except Exception:
            return None
        finally:
            store.close()
        if progress is None:
            return {"state": "running" if running else "never pushed", "running": running}
        if progress.finished_at is not None:
            state = "done"
        else:
            state = "running" if running else "interrupted"
        return {
            "state": state,
            "running": running,
            "pushed": progress.pushed,
            "total": progress.total,
            "mapping_version": progress.mapping_version,
            "started_at": progress.started_at.isoformat(),
            "finished_at": progress.finished_at.isoformat() if progress.finished_at else None,
            "eta_seconds": _eta(progress.pushed, progress.total, progress.started_at)
            if running
            else None,
        }

    def _can_full_sync(self, name: str) -> bool:
        try:
            return build_connectors(name, self._settings.sources[name]).pull is not None
        except Exception:
            return False


def _received_change(row: sqlite3.Row) -> ContactChange:
    """A change as the index keeps it (its sequence is not kept: 0)."""
    detail = json.loads(row["detail"])
    return ContactChange(
        source=row["source"],
        record_id=row["record_id"],
        operation=Operation(detail["operation"]),
        event_id=row["event_id"] or "",
        source_modified_at=datetime.fromisoformat(detail["modified_at"]),
        received_at=datetime.fromisoformat(row["at"]),
        fields=detail["fields"],
        origin=Origin(detail["origin"]),
    )


def _lag(seconds: list[float]) -> dict[str, float] | None:
    """The last change's lag and the median of the last 100 (received to stored)."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return {"last_s": round(seconds[0], 2), "median_s": round(ordered[len(ordered) // 2], 2)}


def _eta(done: int, total: int, started_at: datetime) -> int | None:
    """Seconds left at the rate so far."""
    elapsed = (datetime.now(UTC) - started_at).total_seconds()
    if done <= 0 or elapsed <= 0 or total <= done:
        return None
    return round((total - done) / (done / elapsed))


def _health(health: Health) -> dict[str, str]:
    return {"light": health.light.value, "rule": health.rule}


def _counts(counts: Mapping[tuple[str, str], int], name: str) -> dict[str, int]:
    return {c: counts.get((name, c), 0) for c in (RECEIVED, APPLIED, REJECTED, INVALID)}


def _last_success(facts: SourceFacts) -> str | None:
    candidates = [
        t
        for t in (
            (facts.poll or {}).get("last_success_at"),
            facts.last_applied_at,
            (facts.fullsync or {}).get("finished_at")
            if (facts.fullsync or {}).get("status") == "COMPLETED"
            else None,
        )
        if t
    ]
    return max(candidates) if candidates else None


def _rejection(row: sqlite3.Row, *, full: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": row["id"],
        "rejected_at": row["rejected_at"],
        "stage": row["stage"],
        "source": row["source"],
        "destination": row["destination"],
        "reason": row["reason"],
        "event_id": row["event_id"],
        "record_id": row["record_id"],
        "email": row["email"],
        "origin": (
            f"{row['origin_topic']}[{row['origin_partition']}]@{row['origin_offset']}"
            if row["origin_topic"]
            else None
        ),
        "replayed_at": row["replayed_at"],
    }
    if full:
        value = row["value"]
        result["truncated"] = bool(row["truncated"])
        result["value_bytes"] = len(value) if value is not None else 0
        result["value_text"] = _printable(value)
    return result


def _printable(value: bytes | None) -> str | None:
    """The rejected message as text, when it is (a webhook body, a CSV row)."""
    if value is None:
        return None
    try:
        text = bytes(value).decode()
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() or "\n" in text else None
