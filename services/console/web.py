"""The console's HTTP routes: server-rendered pages that work without JavaScript, and
the same data as JSON under /api for scripts and the ``crmsync`` CLI.

Reading needs the read or the admin role; every route that changes something is a
POST that needs the admin role (and, for a signed-in browser, the form's CSRF
token). An action answers a browser with a redirect back to the page it came from
(post/redirect/get), carrying what happened in the query string.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from services.console.auth import COOKIE, SESSION_S, Caller, Role, Tokens
from services.console.index import ConsoleIndex, RejectionFilter
from services.console.pushes import PushRunner
from services.console.replay import Replayer
from services.console.test_sync import MAX_RECORDS
from services.console.views import IngestAdmin, Views
from services.core.admin_updates import UpdateNotSent

TEMPLATES: Final = Path(__file__).parent / "templates"
STATIC: Final = Path(__file__).parent / "static"
PAGE_SIZE: Final = 50
TEST_SYNC_LIMIT: Final = 10
REPLAY_ALL_LIMIT: Final = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CALLER: Final = web.AppKey("caller", Caller)


class Console:
    def __init__(
        self,
        *,
        views: Views,
        index: ConsoleIndex,
        ingest: IngestAdmin,
        replayer: Replayer,
        tokens: Tokens,
        pushes: PushRunner,
        destinations: Collection[str],
    ) -> None:
        self._pushes = pushes
        self._destinations = destinations
        self._views = views
        self._index = index
        self._ingest = ingest
        self._replayer = replayer
        self._tokens = tokens
        self._pages = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._pages.filters["tojson_pretty"] = _pretty
        self._pages.filters["urlquote"] = lambda v: quote(str(v), safe="")
        self._pages.filters["value"] = _shown_value
        self._pages.filters["when"] = _shown_time

    def install(self, app: web.Application) -> None:
        app.router.add_get("/login", self.login_page)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_static("/static", STATIC)
        for path, handler in (
            ("/", self.overview),
            ("/sources/{name}", self.source),
            ("/sources/{name}/test", self.test_sync),
            ("/destinations/{name}", self.destination),
            ("/records", self.record),
            ("/profiles/{id:\\d+}", self.profile),
            ("/rejected", self.rejected),
            ("/rejected/{id:\\d+}", self.rejection),
        ):
            app.router.add_get(path, self._reading(handler))
            app.router.add_get(f"/api{path}", self._reading(handler, as_json=True))
        for path, action in (
            ("/sources/{name}/pause", self._ingest_action("POST", "/sources/{name}/pause")),
            ("/sources/{name}/resume", self._ingest_action("POST", "/sources/{name}/resume")),
            ("/sources/{name}/fullsync", self._ingest_action("POST", "/fullsync/{name}")),
            (
                "/sources/{name}/fullsync/cancel",
                self._ingest_action("DELETE", "/fullsync/{name}"),
            ),
            (
                "/destinations/{name}/pause",
                self._ingest_action("POST", "/destinations/{name}/pause", page="destinations"),
            ),
            (
                "/destinations/{name}/resume",
                self._ingest_action("POST", "/destinations/{name}/resume", page="destinations"),
            ),
            ("/destinations/{name}/push", self.start_push),
            ("/destinations/{name}/push/cancel", self.cancel_push),
            ("/rejected/{id:\\d+}/replay", self.replay_one),
            ("/profiles/{id:\\d+}/split", self.split),
            ("/rejected/replay", self.replay_matching),
        ):
            app.router.add_post(path, self._acting(action))
            app.router.add_post(f"/api{path}", self._acting(action, as_json=True))

    # --- signing in -------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.Response:
        return self._render("login.html", None, failed=False, next=_next(request))

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        role = self._tokens.role_of_token(str(form.get("token", "")))
        if role is None:
            return self._render("login.html", None, failed=True, next=_next(request), status=401)
        response = web.HTTPSeeOther(_safe_next(str(form.get("next", "/"))))
        response.set_cookie(
            COOKIE,
            self._tokens.session(role),
            max_age=SESSION_S,
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
        )
        raise response

    async def logout(self, _request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # --- pages ------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        return "overview.html", await self._views.overview()

    async def source(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        data = await self._views.source(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound(text=f"no source {request.match_info['name']!r}")
        return "source.html", data

    async def test_sync(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        name = request.match_info["name"]
        limit = _int(request.query.get("limit"), TEST_SYNC_LIMIT)
        if not 1 <= limit <= MAX_RECORDS:
            raise web.HTTPBadRequest(text=f"limit is 1 to {MAX_RECORDS}")
        data = await self._views.test_sync(name, limit)
        if data is None:
            raise web.HTTPNotFound(text=f"no source {name!r}")
        return "test_sync.html", data

    async def destination(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        data = await self._views.destination(request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound(text=f"no destination {request.match_info['name']!r}")
        return "destination.html", data

    async def record(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        query = request.query.get("q", "").strip()
        if not query:
            return "record.html", {"query": "", "events": [], "emails": [], "records": []}
        return "record.html", await self._views.record(query)

    async def profile(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        profile_id = int(request.match_info["id"])
        return "profile.html", self._views.profile_history(profile_id)

    async def rejected(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        where = _rejection_filter(request.query)
        page = max(0, _int(request.query.get("page"), 0))
        data = self._views.rejections(where, limit=PAGE_SIZE, offset=page * PAGE_SIZE)
        data["page"] = page
        data["page_size"] = PAGE_SIZE
        return "rejected.html", data

    async def rejection(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        rejection_id = int(request.match_info["id"])
        data = self._views.rejection(rejection_id)
        if data is None:
            raise web.HTTPNotFound(text=f"no rejection {rejection_id}")
        row = self._index.rejection(rejection_id)
        data["why_not_replayable"] = self._replayer.why_not(row) if row is not None else None
        return "rejection.html", data

    # --- actions ----------------------------------------------------------------------

    def _ingest_action(
        self, method: str, path: str, *, page: str = "sources"
    ) -> Callable[[web.Request], Awaitable[tuple[int, dict[str, Any], str]]]:
        """An action ingest's admin API carries out on a source or destination
        (``{name}`` in ``path``); the browser goes back to its page."""

        async def act(request: web.Request) -> tuple[int, dict[str, Any], str]:
            name = quote(request.match_info["name"])
            code, body = await self._ingest.call(method, path.format(name=name))
            return code, body, f"/{page}/{name}"

        return act

    async def start_push(self, request: web.Request) -> tuple[int, dict[str, Any], str]:
        name = self._named_destination(request)
        if self._pushes.start(name):
            return 202, {"push": name, "state": "started"}, f"/destinations/{quote(name)}"
        return 409, {"error": f"a push of {name} is running"}, f"/destinations/{quote(name)}"

    async def cancel_push(self, request: web.Request) -> tuple[int, dict[str, Any], str]:
        name = self._named_destination(request)
        stopped = await asyncio.to_thread(self._pushes.cancel, name)
        if stopped:
            return 202, {"push": name, "state": "cancelled"}, f"/destinations/{quote(name)}"
        return 409, {"error": f"no push of {name} is running"}, f"/destinations/{quote(name)}"

    def _named_destination(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in self._destinations:
            raise web.HTTPNotFound(text=f"no destination {name!r}")
        return name

    async def split(self, request: web.Request) -> tuple[int, dict[str, Any], str]:
        """Undo a merge: form field ``merged``, a profile merged into this one."""
        profile_id = int(request.match_info["id"])
        form = await request.post()
        back = f"/profiles/{profile_id}"
        merged = str(form.get("merged", ""))
        if not merged.isdigit():
            return 400, {"error": "name the merged profile to split off ('merged')"}, back
        try:
            event_id = await self._views.split(int(merged))
        except UpdateNotSent as exc:
            return 503, {"error": str(exc)}, back
        body = {"split": int(merged), "event_id": event_id, "state": "sent"}
        return 202, body, back

    async def replay_one(self, request: web.Request) -> tuple[int, dict[str, Any], str]:
        rejection_id = int(request.match_info["id"])
        row = self._index.rejection(rejection_id)
        if row is None:
            return 404, {"error": f"no rejection {rejection_id}"}, "/rejected"
        return await self._replay([row], back=f"/rejected/{rejection_id}")

    async def replay_matching(self, request: web.Request) -> tuple[int, dict[str, Any], str]:
        form = await request.post()
        where = _rejection_filter({k: str(v) for k, v in form.items()})
        if where == RejectionFilter(replayed=False):
            refusal = {"error": "name a source, stage or reason to replay all matching"}
            return 400, refusal, "/rejected"
        rows = self._index.rejections(where, limit=REPLAY_ALL_LIMIT)
        query = urlencode({k: str(v) for k, v in form.items() if k != "csrf" and v})
        return await self._replay(rows, back=f"/rejected?{query}")

    async def _replay(self, rows: list[Any], *, back: str) -> tuple[int, dict[str, Any], str]:
        result = await asyncio.to_thread(self._replayer.replay, rows)
        if result.replayed:
            self._index.mark_replayed(result.replayed, datetime.now(UTC))
        body = {"replayed": result.replayed, "refused": result.refused}
        code = 202 if result.replayed or not result.refused else 409
        return code, body, back

    # --- plumbing ---------------------------------------------------------------------

    def _reading(
        self,
        handler: Callable[[web.Request], Awaitable[tuple[str, dict[str, Any]]]],
        *,
        as_json: bool = False,
    ) -> Handler:
        async def read(request: web.Request) -> web.StreamResponse:
            caller = self._caller(request, as_json=as_json)
            template, data = await handler(request)
            if as_json:
                return web.json_response(data, dumps=_dumps)
            return self._render(template, caller, **data, done=request.query.get("done"))

        return read

    def _acting(
        self,
        action: Callable[[web.Request], Awaitable[tuple[int, dict[str, Any], str]]],
        *,
        as_json: bool = False,
    ) -> Handler:
        async def act(request: web.Request) -> web.StreamResponse:
            caller = self._caller(request, as_json=as_json)
            if not caller.admin:
                raise _refused(as_json, 403, "this needs the admin token (sign in with it)")
            form = await request.post()
            if not self._tokens.csrf_matches(caller, str(form.get("csrf", ""))):
                raise _refused(as_json, 403, "the form expired: reload the page and try again")
            code, body, back = await action(request)
            if as_json:
                return web.json_response(body, status=code or 502, dumps=_dumps)
            told = _told(code, body)
            separator = "&" if "?" in back else "?"
            raise web.HTTPSeeOther(f"{back}{separator}{urlencode({'done': told})}")

        return act

    def _caller(self, request: web.Request, *, as_json: bool) -> Caller:
        if not self._tokens.configured:
            raise _refused(
                as_json,
                403,
                "console disabled: set services.console.read_token or services.ingest.admin_token",
            )
        caller = self._tokens.caller(request)
        if caller is None:
            if as_json:
                raise _refused(True, 401, "invalid or missing bearer token")
            raise web.HTTPSeeOther(f"/login?{urlencode({'next': request.path_qs})}")
        return caller

    def _render(
        self,
        template: str,
        caller: Caller | None,
        *,
        status: int = 200,
        done: str | None = None,
        **data: Any,
    ) -> web.Response:
        page = self._pages.get_template(template).render(
            done=done,
            caller=caller,
            admin=caller is not None and caller.role is Role.ADMIN,
            csrf=self._tokens.csrf(caller) if caller is not None else "",
            **data,
        )
        return web.Response(text=page, content_type="text/html", status=status)


def _told(code: int, body: dict[str, Any]) -> str:
    if code == 0:
        return f"not done: ingest {body.get('error', 'did not answer')}"
    if code >= 400:
        return f"not done ({code}): {body.get('error') or _refusals(body)}"
    if "replayed" in body:
        refused = f", {len(body['refused'])} not replayable" if body["refused"] else ""
        return f"replayed {len(body['replayed'])}{refused}"
    who = body.get("source") or body.get("destination")
    if "pause_id" in body:
        return f"paused {who}: its changes queue until resumed"
    if "resumed" in body:
        return f"resumed {who}: its queued changes are applied in order"
    if "push" in body:
        return f"backfill of {body['push']}: {body['state']}"
    if "sync_id" in body:
        return f"full sync {body['sync_id']}: {body.get('status', '').lower()}"
    if "split" in body:
        return f"split of profile {body['split']} sent: the writer gives its records back"
    return "done"


def _refusals(body: dict[str, Any]) -> str:
    refused = body.get("refused") or {}
    return "; ".join(f"#{k}: {v}" for k, v in list(refused.items())[:3]) or "refused"


def _refused(as_json: bool, status: int, message: str) -> web.HTTPException:
    error_class = {401: web.HTTPUnauthorized, 403: web.HTTPForbidden}.get(
        status, web.HTTPBadRequest
    )
    if as_json:
        return error_class(text=_dumps({"error": message}), content_type="application/json")
    return error_class(text=message)


def _rejection_filter(query: Any) -> RejectionFilter:
    replayed = query.get("replayed")
    return RejectionFilter(
        source=query.get("source") or None,
        destination=query.get("destination") or None,
        stage=query.get("stage") or None,
        reason=query.get("reason") or None,
        email=(query.get("email") or "").strip().lower() or None,
        record_id=query.get("record_id") or None,
        replayed=None if replayed in (None, "", "any") else replayed == "yes",
    )


def _next(request: web.Request) -> str:
    return _safe_next(request.query.get("next", "/"))


def _safe_next(target: str) -> str:
    """Only a path on this console: never a redirect elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _dumps(data: Any) -> str:
    return json.dumps(data, default=str, ensure_ascii=False)


def _pretty(data: Any) -> str:
    return json.dumps(data, default=str, ensure_ascii=False, indent=2)


def _shown_value(value: Any) -> str:
    """A field's value as a person reads it: blank shown as such, lists joined."""
    if value is None:
        return "(blank)"
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return str(value)


def _shown_time(value: Any) -> str:
    """An ISO time as 2026-12-03 16:38:46 UTC (the index keeps UTC)."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
