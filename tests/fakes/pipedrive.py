"""A fake Pipedrive: the persons API v2 and Webhooks v2, shaped as Pipedrive documents them.

- ``GET /api/v2/persons`` with ``updated_since`` / ``updated_until`` (RFC 3339),
  ``sort_by`` (id, update_time, add_time), ``sort_direction`` (asc, desc), ``limit``
  (default 100, at most 500) and an opaque ``cursor`` marking the first person of the
  next page; answers ``{"success": true, "data": [...], "additional_data":
  {"next_cursor": ... | null}}``. Deleted persons are not listed. The API token must be
  in the ``x-api-token`` header (or the older ``api_token`` query parameter), else 401
  with Pipedrive's error body. Every answer carries the ``x-ratelimit-*`` headers;
  ``throttle_response`` is Pipedrive's 429 for ``Faults``.
- Persons live in memory; ``upsert`` / ``delete`` stamp ``update_time`` in whole
  seconds as Pipedrive does (a person changed twice within a second gets the next
  second, so each version stays distinct) and record the Webhooks v2 event Pipedrive
  would send. ``webhook(event)`` builds that request: the JSON body (``meta``, ``data``,
  ``previous``; custom fields tagged with their type) and the HTTP Basic header of the
  webhook's ``http_auth_user`` / ``http_auth_password``.
- Writes through the API, as the persons API v2 reference has them: ``POST
  /api/v2/persons`` (add), ``PATCH /api/v2/persons/{id}`` (change the fields the body
  names), ``DELETE /api/v2/persons/{id}`` (answer ``{"success": true, "data": {"id"}}``),
  and ``GET /api/v2/persons/search`` (``term``, ``fields``, ``exact_match``, ``limit``;
  items ``{"result_score", "item": {"id", "type": "person", "name", "emails": [...],
  "phones": [...], ...}}``; a term of at least 2 characters, or 1 with
  ``exact_match``). Bodies take ``name``, ``owner_id``, ``org_id``, ``emails`` /
  ``phones`` (lists of ``{value, primary, label}``), ``visible_to`` (1, 3, 5 or 7),
  ``label_ids``, ``marketing_status`` (no_consent, unsubscribed, subscribed, archived)
  and ``custom_fields`` (by the account's field keys); anything else of these is a 400
  with Pipedrive's error body, an unknown person a 404. Writes share ``persons`` with
  ``upsert`` and record the webhook Pipedrive would send, with ``meta.change_source``
  "api" and ``meta.user_id`` the token's user (``TOKEN_USER_ID``), where edits in the
  web app (``upsert``) have "app" and ``APP_USER_ID``. ``api_writes`` counts them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from tests.fakes.server import FakeServer, Faults, run_standalone, standalone_arguments

API_TOKEN: Final = "pipedrive-token-1"
WEBHOOK_USER: Final = "crmsync"
WEBHOOK_PASSWORD: Final = "pipedrive-hook-secret-1"
COMPANY_ID: Final = "9876543"
APP_USER_ID: Final = "123"
TOKEN_USER_ID: Final = "456"
"""The user whose API token crmsync writes with."""
VISIBILITY: Final = frozenset({1, 3, 5, 7})
MARKETING_STATUSES: Final = frozenset({"no_consent", "unsubscribed", "subscribed", "archived"})
WRITABLE: Final = frozenset(
    {
        "name",
        "owner_id",
        "org_id",
        "emails",
        "phones",
        "visible_to",
        "label_ids",
        "marketing_status",
        "custom_fields",
    }
)
MAX_LIMIT: Final = 500
SORT_FIELDS: Final = ("id", "update_time", "add_time")
ERROR_INFO: Final = (
    "Please check developers.pipedrive.com for more information about Pipedrive API."
)


def field_key(name: str) -> str:
    """Custom fields are keyed by 40-character hashes."""
    return hashlib.sha1(name.encode()).hexdigest()  # noqa: S324 - a key, not security


# The fake account's person custom fields and their types.
CUSTOM_FIELDS: Final = {
    field_key("newsletter"): "varchar",
    field_key("segment"): "enum",
    field_key("interests"): "set",
    field_key("lifetime_value"): "monetary",
}
NEWSLETTER, SEGMENT, INTERESTS, LIFETIME_VALUE = CUSTOM_FIELDS


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_millis(moment: datetime) -> str:
    """``meta.timestamp`` as the guide's example has it: ``2023-01-01T00:00:00.000Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment


def tagged(kind: str, value: Any) -> Any:
    """A custom field value as Webhooks v2 sends it."""
    if value is None:
        return None
    if kind == "enum":
        return {"type": kind, "id": value}
    if kind == "set":
        return {"type": kind, "values": [{"id": option} for option in value]}
    if kind == "monetary":
        return {"type": kind, **value}
    return {"type": kind, "value": value}


class FakePipedrive:
    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self.persons: dict[int, dict[str, Any]] = {}
        self.deleted: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.api_writes = 0
        self.bodies: list[dict[str, Any]] = []
        """The bodies of the API's adds and updates, in order."""
        self.searches = 0
        self.reset_seconds = 1
        self._clock = clock or (lambda: datetime.now(UTC))
        self._next_id = 1

    # --- data ------------------------------------------------------------------------

    def upsert(self, person_id: int | None = None, **changes: Any) -> dict[str, Any]:
        """Create or change a person, as a user of the web app. ``email`` / ``phone`` set
        the primary one; ``custom`` maps custom field keys to values; other keys are
        person fields."""
        return self._save(person_id, lambda person: self._apply(person, changes), via_api=False)

    def delete(self, person_id: int, *, via_api: bool = False) -> None:
        person = self.persons.pop(person_id)
        self.deleted[person_id] = person
        self._record(
            "delete", person_id, data=None, previous=self.webhook_data(person), via_api=via_api
        )

    def by_email(self, email: str) -> list[dict[str, Any]]:
        """The persons with this email (any of theirs), not case sensitive."""
        wanted = email.lower()
        return [
            person
            for person in self.persons.values()
            if any(str(item["value"]).lower() == wanted for item in person["emails"])
        ]

    def _save(
        self,
        person_id: int | None,
        change: Callable[[dict[str, Any]], None],
        *,
        via_api: bool,
    ) -> dict[str, Any]:
        if person_id is None:
            person_id = self._next_id
        self._next_id = max(self._next_id, person_id + 1)
        old = self.persons.get(person_id)
        person = dict(old) if old is not None else self._new(person_id)
        change(person)
        person["update_time"] = iso(self._stamp(old))
        self.persons[person_id] = person
        self._record(
            "change" if old is not None else "create",
            person_id,
            data=self.webhook_data(person),
            previous=self._changed(old, person) if old is not None else None,
            via_api=via_api,
        )
        return person

    def seed(self, count: int) -> None:
        for index in range(count):
            self.upsert(
                first_name=f"First{index}",
                last_name=f"Last{index}",
                email=f"person{index}@example.com",
                custom={NEWSLETTER: "yes", SEGMENT: 1 + index % 3, INTERESTS: [1, 2]},
            )

    def _new(self, person_id: int) -> dict[str, Any]:
        now = iso(self._clock())
        return {
            "id": person_id,
            "name": "",
            "first_name": "",
            "last_name": "",
            "owner_id": 1,
            "org_id": None,
            "add_time": now,
            "update_time": now,
            "emails": [],
            "phones": [],
            "is_deleted": False,
            "visible_to": 3,
            "label_ids": [],
            "picture_id": None,
            "custom_fields": dict.fromkeys(CUSTOM_FIELDS),
        }

    @staticmethod
    def _apply(person: dict[str, Any], changes: dict[str, Any]) -> None:
        email = changes.pop("email", None)
        if email is not None:
            person["emails"] = [{"value": email, "primary": True, "label": "work"}]
        phone = changes.pop("phone", None)
        if phone is not None:
            person["phones"] = [{"value": phone, "primary": True, "label": "mobile"}]
        person["custom_fields"] = {**person["custom_fields"], **changes.pop("custom", {})}
        person.update(changes)
        person["name"] = f"{person['first_name']} {person['last_name']}".strip()

    def _stamp(self, old: dict[str, Any] | None) -> datetime:
        now = self._clock().replace(microsecond=0)
        if old is not None:
            previous = parse_rfc3339(old["update_time"])
            now = max(now, previous + timedelta(seconds=1))
        return now

    # --- webhooks --------------------------------------------------------------------

    @staticmethod
    def webhook_data(person: dict[str, Any]) -> dict[str, Any]:
        """The person as a Webhooks v2 ``data`` block."""
        return {
            "id": person["id"],
            "name": person["name"],
            "first_name": person["first_name"],
            "last_name": person["last_name"],
            "owner_id": person["owner_id"],
            "org_id": person["org_id"],
            "add_time": person["add_time"],
            "update_time": person["update_time"],
            "emails": person["emails"],
            "phones": person["phones"],
            "label": None,
            "label_ids": person["label_ids"],
            "visible_to": str(person["visible_to"]),
            "custom_fields": {
                key: tagged(CUSTOM_FIELDS[key], value)
                for key, value in person["custom_fields"].items()
            },
        }

    @staticmethod
    def _changed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        before, after = FakePipedrive.webhook_data(old), FakePipedrive.webhook_data(new)
        return {key: value for key, value in before.items() if after.get(key) != value}

    def _record(
        self,
        action: str,
        person_id: int,
        *,
        data: dict[str, Any] | None,
        previous: dict[str, Any] | None,
        via_api: bool,
    ) -> None:
        """The Webhooks v2 event of a change: by the token's user through the API, or
        by a user of the web app."""
        self.events.append(
            {
                "meta": {
                    "action": action,
                    "entity": "person",
                    "company_id": COMPANY_ID,
                    "correlation_id": str(uuid.uuid4()),
                    "entity_id": str(person_id),
                    "id": str(uuid.uuid4()),
                    "is_bulk_edit": False,
                    "timestamp": iso_millis(self._clock()),
                    "type": "general",
                    "user_id": TOKEN_USER_ID if via_api else APP_USER_ID,
                    "version": "2.0",
                    "webhook_id": "77",
                    "webhook_owner_id": APP_USER_ID,
                    "change_source": "api" if via_api else "app",
                    "attempt": 1,
                    "host": "company.pipedrive.com",
                    "permitted_user_ids": [APP_USER_ID, TOKEN_USER_ID],
                },
                "data": data,
                "previous": previous,
            }
        )

    @staticmethod
    def webhook(
        event: dict[str, Any],
        *,
        user: str = WEBHOOK_USER,
        password: str = WEBHOOK_PASSWORD,
        attempt: int = 1,
    ) -> tuple[bytes, dict[str, str]]:
        """The request Pipedrive sends for ``event``: body and headers."""
        body = {**event, "meta": {**event["meta"], "attempt": attempt}}
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Pipedrive-Webhook",
            "Authorization": f"Basic {credentials}",
        }
        return json.dumps(body).encode(), headers

    # --- the API ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v2/persons", self.list_persons)
        app.router.add_get("/api/v2/persons/search", self.search_persons)
        app.router.add_post("/api/v2/persons", self.add_person)
        app.router.add_patch("/api/v2/persons/{id}", self.update_person)
        app.router.add_delete("/api/v2/persons/{id}", self.delete_person)
        return app

    def throttle_response(self, status: int) -> web.Response:
        """Pipedrive's answer over the burst limit or the daily token budget."""
        return web.json_response(
            self._error("Rate limit has been exceeded"),
            status=status,
            headers={
                "x-ratelimit-limit": "20",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": str(self.reset_seconds),
            },
        )

    @staticmethod
    def _error(message: str) -> dict[str, Any]:
        return {
            "success": False,
            "error": message,
            "error_info": ERROR_INFO,
            "data": None,
            "additional_data": None,
        }

    def _answer(self, body: dict[str, Any], status: int = 200) -> web.Response:
        return web.json_response(
            body,
            status=status,
            headers={"x-ratelimit-limit": "20", "x-ratelimit-remaining": "19"},
        )

    async def list_persons(self, request: web.Request) -> web.Response:
        token = request.headers.get("x-api-token") or request.query.get("api_token")
        if token != API_TOKEN:
            return self._answer(self._error("unauthorized access"), status=401)
        try:
            query = PersonsQuery.from_request(request)
        except ValueError as exc:
            return self._answer(self._error(str(exc)), status=400)
        ordered = sorted(
            (p for p in self.persons.values() if query.matches(p)),
            key=query.sort_key,
            reverse=query.descending,
        )
        start = query.start(ordered)
        page = ordered[start : start + query.limit]
        rest = ordered[start + query.limit :]
        next_cursor = query.cursor_for(rest[0]) if rest else None
        return self._answer(
            {"success": True, "data": page, "additional_data": {"next_cursor": next_cursor}}
        )

    # --- writes ----------------------------------------------------------------------

    @staticmethod
    def _authorized(request: web.Request) -> bool:
        token = request.headers.get("x-api-token") or request.query.get("api_token")
        return token == API_TOKEN

    async def search_persons(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._answer(self._error("unauthorized access"), status=401)
        term = request.query.get("term", "")
        exact = request.query.get("exact_match", "false") == "true"
        fields = set(request.query.get("fields", "email,name,phone,notes,custom_fields").split(","))
        if len(term) < (1 if exact else 2):
            return self._answer(self._error("term must be at least 2 characters"), status=400)
        self.searches += 1
        wanted = term.lower()

        def hit(value: Any) -> bool:
            text = str(value).lower()
            return text == wanted if exact else wanted in text

        found = [
            person
            for person in sorted(self.persons.values(), key=lambda p: p["id"])
            if ("email" in fields and any(hit(e["value"]) for e in person["emails"]))
            or ("name" in fields and hit(person["name"]))
            or ("phone" in fields and any(hit(p["value"]) for p in person["phones"]))
        ]
        limit = int(request.query.get("limit", "100"))
        items = [{"result_score": 1.0, "item": self._search_item(p)} for p in found[:limit]]
        return self._answer(
            {"success": True, "data": {"items": items}, "additional_data": {"next_cursor": None}}
        )

    @staticmethod
    def _search_item(person: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": person["id"],
            "type": "person",
            "name": person["name"],
            "phones": [p["value"] for p in person["phones"]],
            "emails": [e["value"] for e in person["emails"]],
            "visible_to": person["visible_to"],
            "owner": {"id": person["owner_id"]},
            "organization": None,
            "custom_fields": [],
            "notes": [],
        }

    async def add_person(self, request: web.Request) -> web.Response:
        return await self._write(request, None)

    async def update_person(self, request: web.Request) -> web.Response:
        return await self._write(request, request.match_info["id"])

    async def _write(self, request: web.Request, raw_id: str | None) -> web.Response:
        if not self._authorized(request):
            return self._answer(self._error("unauthorized access"), status=401)
        person_id = self._person_id(raw_id) if raw_id is not None else None
        if raw_id is not None and person_id is None:
            return self._answer(self._error("Person not found"), status=404)
        try:
            body = await request.json()
        except ValueError:
            return self._answer(self._error("Invalid JSON body"), status=400)
        problem = self._invalid(body)
        if problem is not None:
            return self._answer(self._error(problem), status=400)
        self.api_writes += 1
        self.bodies.append(body)
        person = self._save(person_id, lambda p: self._apply_api(p, body), via_api=True)
        return self._answer({"success": True, "data": person})

    async def delete_person(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._answer(self._error("unauthorized access"), status=401)
        person_id = self._person_id(request.match_info["id"])
        if person_id is None:
            return self._answer(self._error("Person not found"), status=404)
        self.api_writes += 1
        self.delete(person_id, via_api=True)
        return self._answer({"success": True, "data": {"id": person_id}})

    def _person_id(self, raw: str) -> int | None:
        return int(raw) if raw.isdigit() and int(raw) in self.persons else None

    @staticmethod
    def _invalid(body: Any) -> str | None:
        """Why Pipedrive would refuse this body, if it would."""
        if not isinstance(body, dict):
            return "The request body must be a JSON object"
        unknown = set(body) - WRITABLE
        if unknown:
            return f"Unknown parameter: {sorted(unknown)[0]}"
        for name in ("emails", "phones"):
            items = body.get(name, [])
            if not isinstance(items, list) or not all(
                isinstance(i, dict) and isinstance(i.get("value"), str) for i in items
            ):
                return f"{name} must be a list of objects with a value"
        if "visible_to" in body and body["visible_to"] not in VISIBILITY:
            return "visible_to must be one of 1, 3, 5, 7"
        status = body.get("marketing_status")
        if status is not None and status not in MARKETING_STATUSES:
            return f"marketing_status must be one of {', '.join(sorted(MARKETING_STATUSES))}"
        custom = body.get("custom_fields", {})
        if not isinstance(custom, dict):
            return "custom_fields must be an object"
        for key in custom:
            if key not in CUSTOM_FIELDS:
                return f"Custom field {key} does not exist"
        return None

    @staticmethod
    def _apply_api(person: dict[str, Any], body: dict[str, Any]) -> None:
        """A v2 body: the fields it names replace the person's (lists as a whole);
        custom fields merge key by key."""
        for name in ("emails", "phones"):
            if name in body:
                person[name] = [
                    {
                        "value": item["value"],
                        "primary": bool(item.get("primary", index == 0)),
                        "label": item.get("label", "work"),
                    }
                    for index, item in enumerate(body[name])
                ]
        person["custom_fields"] = {**person["custom_fields"], **body.get("custom_fields", {})}
        person.update(
            {k: v for k, v in body.items() if k not in ("emails", "phones", "custom_fields")}
        )


class PersonsQuery:
    """The documented parameters of GET /api/v2/persons, checked as Pipedrive does."""

    def __init__(self, params: dict[str, str]) -> None:
        self.sort_by = params.get("sort_by", "id")
        if self.sort_by not in SORT_FIELDS:
            raise ValueError(f"sort_by must be one of {', '.join(SORT_FIELDS)}")
        direction = params.get("sort_direction", "asc")
        if direction not in ("asc", "desc"):
            raise ValueError("sort_direction must be asc or desc")
        self.descending = direction == "desc"
        self.limit = int(params.get("limit", "100"))
        if not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        since, until = params.get("updated_since"), params.get("updated_until")
        self.since = parse_rfc3339(since) if since else None
        self.until = parse_rfc3339(until) if until else None
        self.cursor = self._decode(params["cursor"]) if params.get("cursor") else None

    @classmethod
    def from_request(cls, request: web.Request) -> PersonsQuery:
        return cls(dict(request.query))

    def matches(self, person: dict[str, Any]) -> bool:
        updated = parse_rfc3339(person["update_time"])
        return (self.since is None or updated >= self.since) and (
            self.until is None or updated < self.until
        )

    def sort_key(self, person: dict[str, Any]) -> tuple[Any, int]:
        value = person[self.sort_by]
        return (parse_rfc3339(value) if self.sort_by != "id" else value, person["id"])

    def start(self, ordered: list[dict[str, Any]]) -> int:
        """The index of the cursor's person (or of the next one, if it moved)."""
        if self.cursor is None:
            return 0
        marker = self.cursor
        for index, person in enumerate(ordered):
            key = self.sort_key(person)
            if (key <= marker) if self.descending else (key >= marker):
                return index
        return len(ordered)

    def cursor_for(self, person: dict[str, Any]) -> str:
        raw = json.dumps(
            {
                "field": self.sort_by,
                "fieldValue": person[self.sort_by],
                "sortDirection": "desc" if self.descending else "asc",
                "id": person["id"],
            }
        )
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def _decode(self, cursor: str) -> tuple[Any, int]:
        try:
            raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            if raw["field"] != self.sort_by:
                raise ValueError("cursor belongs to another sort order")
            value = raw["fieldValue"]
            return (parse_rfc3339(value) if self.sort_by != "id" else value, int(raw["id"]))
        except (ValueError, KeyError, TypeError):
            raise ValueError("invalid cursor") from None


def main() -> None:
    args = standalone_arguments("fake Pipedrive (persons API v2)").parse_args()
    crm = FakePipedrive()
    crm.seed(args.records)
    faults = Faults(
        max_requests_per_second=args.rate_limit,
        error_rate=args.error_rate,
        seed=args.seed,
        throttle_response=crm.throttle_response,
    )
    run_standalone(FakeServer(crm.app(), faults), args.port)


if __name__ == "__main__":
    main()
