"""The operators' HTTP API on ingest: full syncs and per-source status.

``POST /fullsync/{source}`` starts a full sync (202, or 409 when one runs),
``GET /fullsync/{source}`` shows its progress, ``DELETE /fullsync/{source}`` cancels
it, ``POST /sources/{source}/pause`` and ``.../resume`` pause a source (its changes
queue) and resume it (they are applied in order), ``POST /destinations/{name}/pause``
and ``.../resume`` do the same for a destination's deliveries, ``GET /status`` shows
every source and destination.
All of it needs the admin bearer token
(``services.ingest.admin_token``); without one configured the API answers 403.
The ``crmsync`` CLI is a client of this API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from services.core.bearer import bearer_matches
from services.core.contracts import destination_subject
from services.core.sources.common import PollSettings
from services.ingest.connectors.base import SourceConnectors
from services.ingest.fullsync import AlreadyRunning, FullSyncs, NotRunning, Progress
from services.ingest.pauses import AlreadyPaused, NotPaused, Pause, SourcePauses
from services.ingest.publisher import BrokerUnavailable
from services.ingest.state import FullSyncState, PollState, StateStore


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


async def _told_conflicts(pausing: Awaitable[Pause]) -> Pause:
    """A pause or resume, its conflicts answered 409 and a broker outage 503."""
    try:
        return await pausing
    except (AlreadyPaused, NotPaused) as exc:
        raise _error(409, str(exc)) from None
    except BrokerUnavailable:
        raise _error(503, "Kafka unavailable; try again") from None


def pause_json(pause: Pause) -> dict[str, Any]:
    return {"pause_id": pause.pause_id, "since": iso(pause.since)}


def fullsync_json(state: FullSyncState) -> dict[str, Any]:
    progress = Progress.of(state)
    return {
        "sync_id": state.sync_id,
        "status": state.status.value,
        "origin": state.origin,
        "owner": state.owner,
        "records_done": state.records_done,
        "records_rejected": state.records_rejected,
        "records_total": state.records_total,
        "rate_per_s": round(progress.rate_per_s, 1) if progress.rate_per_s else None,
        "eta_seconds": round(progress.eta_seconds) if progress.eta_seconds is not None else None,
        "started_at": iso(state.started_at),
        "updated_at": iso(state.updated_at),
        "finished_at": iso(state.finished_at),
        "reason": state.reason,
    }


def poll_json(settings: PollSettings, state: PollState | None) -> dict[str, Any]:
    state = state or PollState()
    return {
        "enabled": settings.enabled,
        "schedule": settings.cron or f"every {settings.interval_seconds}s",
        "watermark": iso(state.watermark),
        "last_attempt_at": iso(state.last_attempt_at),
        "last_success_at": iso(state.last_success_at),
        "last_error": state.last_error,
        "consecutive_failures": state.consecutive_failures,
        "changes_delivered": state.changes_delivered,
    }


class AdminApi:
    def __init__(
        self,
        *,
        sources: Mapping[str, SourceConnectors],
        kinds: Mapping[str, str],
        mapping_versions: Mapping[str, int],
        fullsyncs: FullSyncs,
        pauses: SourcePauses,
        destinations: Mapping[str, bool],
        store: StateStore,
        token: str | None,
        accepting: Callable[[], bool],
    ) -> None:
        self._sources = sources
        self._kinds = kinds
        self._mapping_versions = mapping_versions
        self._fullsyncs = fullsyncs
        self._pauses = pauses
        self._destinations = destinations
        self._store = store
        self._token = token
        self._accepting = accepting

    def install(self, app: web.Application) -> None:
        app.router.add_post("/fullsync/{source}", answering_refusals(self.start_fullsync))
        app.router.add_get("/fullsync/{source}", answering_refusals(self.fullsync_status))
        app.router.add_delete("/fullsync/{source}", answering_refusals(self.cancel_fullsync))
        app.router.add_post("/sources/{source}/pause", answering_refusals(self.pause))
        app.router.add_post("/sources/{source}/resume", answering_refusals(self.resume))
        app.router.add_post(
            "/destinations/{destination}/pause", answering_refusals(self.pause_destination)
        )
        app.router.add_post(
            "/destinations/{destination}/resume", answering_refusals(self.resume_destination)
        )
        app.router.add_get("/status", answering_refusals(self.status))

    def _authorize(self, request: web.Request) -> None:
        if not self._accepting():
            raise _error(503, "starting up")
        if self._token is None:
            raise _error(403, "admin API disabled: set services.ingest.admin_token")
        if not bearer_matches(request.headers.get("Authorization", ""), self._token):
            raise _error(401, "invalid or missing admin bearer token")

    def _source(self, request: web.Request) -> str:
        source = request.match_info["source"]
        if source not in self._sources:
            raise _error(404, f"unknown source {source!r}")
        return source

    async def start_fullsync(self, request: web.Request) -> web.Response:
        self._authorize(request)
        source = self._source(request)
        if not self._fullsyncs.can_sync(source):
            raise _error(
                422, f"source {source!r} has no API to pull from; use 'crmsync import csv'"
            )
        if self._pauses.paused(source) is not None:
            raise _error(
                409,
                f"source {source!r} is paused: resume it first (a full sync would release "
                "its queued changes)",
            )
        try:
            state = await self._fullsyncs.start(source)
        except AlreadyRunning as exc:
            raise _error(409, str(exc)) from None
        except BrokerUnavailable:
            raise _error(503, "Kafka unavailable; try again") from None
        return web.json_response(fullsync_json(state), status=202)

    async def fullsync_status(self, request: web.Request) -> web.Response:
        self._authorize(request)
        source = self._source(request)
        state = self._fullsyncs.status(source)
        if state is None:
            raise _error(404, f"no full sync has run for {source!r}")
        return web.json_response(fullsync_json(state))

    async def cancel_fullsync(self, request: web.Request) -> web.Response:
        self._authorize(request)
        source = self._source(request)
        try:
            state = await self._fullsyncs.cancel(source)
        except NotRunning as exc:
            raise _error(404, str(exc)) from None
        except BrokerUnavailable:
            raise _error(503, "Kafka unavailable; try again") from None
        return web.json_response(fullsync_json(state), status=202)

    async def pause(self, request: web.Request) -> web.Response:
        self._authorize(request)
        source = self._source(request)
        sync = self._fullsyncs.status(source)
        if sync is not None and sync.running:
            raise _error(409, f"a full sync of {source!r} is running: cancel it or let it end")
        pause = await _told_conflicts(self._pauses.pause(source))
        return web.json_response({"source": source, **pause_json(pause)}, status=202)

    async def resume(self, request: web.Request) -> web.Response:
        self._authorize(request)
        source = self._source(request)
        pause = await _told_conflicts(self._pauses.resume(source))
        return web.json_response({"source": source, "resumed": pause.pause_id}, status=202)

    async def pause_destination(self, request: web.Request) -> web.Response:
        self._authorize(request)
        name = self._destination(request)
        pause = await _told_conflicts(self._pauses.pause(destination_subject(name)))
        return web.json_response({"destination": name, **pause_json(pause)}, status=202)

    async def resume_destination(self, request: web.Request) -> web.Response:
        self._authorize(request)
        name = self._destination(request)
        pause = await _told_conflicts(self._pauses.resume(destination_subject(name)))
        return web.json_response({"destination": name, "resumed": pause.pause_id}, status=202)

    def _destination(self, request: web.Request) -> str:
        name = request.match_info["destination"]
        if name not in self._destinations:
            raise _error(404, f"unknown destination {name!r}")
        return name

    async def status(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body: dict[str, Any] = {}
        for source, connectors in sorted(self._sources.items()):
            sync = self._fullsyncs.status(source)
            body[source] = {
                "kind": self._kinds[source],
                "mapping_version": self._mapping_versions[source],
                "webhook": connectors.webhook is not None,
                "poll": poll_json(connectors.poll, self._store.poll(source))
                if connectors.poll is not None
                else None,
                "fullsync": fullsync_json(sync) if sync is not None else None,
                "paused": pause_json(pause) if (pause := self._pauses.paused(source)) else None,
            }
        destinations = {
            name: {
                "paused_in_config": in_config,
                "paused": pause_json(pause)
                if (pause := self._pauses.paused(destination_subject(name)))
                else None,
            }
            for name, in_config in sorted(self._destinations.items())
        }
        return web.json_response({"sources": body, "destinations": destinations})


class Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> Refusal:
    return Refusal(status, message)


Handler = Callable[[web.Request], Awaitable[web.Response]]


def answering_refusals(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except Refusal as refusal:
            return web.json_response({"error": str(refusal)}, status=refusal.status)

    return wrapped
