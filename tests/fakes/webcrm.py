"""A fake webCRM REST API: token exchange, persons, the query endpoint, its rate limit.

- ``POST /Auth/ApiLogin`` takes the application token as ``authCode`` in the form body
  (or, as an older page had it, a header) and answers ``AccessToken``, ``RefreshToken``,
  ``ExpiresIn``, ``TokenType``; access tokens expire after ``token_lifetime`` seconds
  (an hour) or when a test calls ``expire_tokens``; ``POST /Auth/ApiRefresh`` takes the
  ``refreshToken`` header. Every other call needs ``Authorization: Bearer <token>``, else
  401.
- ``GET /Persons?Page=&Size=``: persons by PersonId, as PersonDto objects.
- ``GET /Queries?script=&Page=&Size=``: runs the subset of webCRM's SQL-like scripts
  crmsync and webCRM's own integrations write: ``SELECT * FROM Person [WHERE ...]
  [ORDER BY field [ASC|DESC], ...]`` with comparisons (=, <>, <, <=, >, >=) of a field
  with a 'text' or a number, AND, OR and parentheses; times compare as times. Anything
  else is a 400, as a script webCRM cannot run would be.
- Writes, as the Swagger definition (in the SDK webCRM generated from it) has them:
  ``GET /Persons/{id}`` (a PersonDto, 404 when there is none), ``POST /Persons`` (a
  PersonDto with ``PersonId`` 0; answers the new id as a JSON number), ``PUT
  /Persons/{id}`` (the whole PersonDto: a field it leaves out goes back to its empty
  value, which is how this fake reads a replace; 200 with no body) and ``DELETE
  /Persons/{id}`` (200; absent from that Swagger definition, served because crmsync
  tries it; with ``serves_delete`` False a 405, as an API without it answers). A field
  a person does not have, a read-only one (created / updated stamps), a missing
  ``PersonId`` or a ``PersonOrganisationId`` of no organisation is a 400
  ``BadRequestException``; an unknown person a 404 ``NotFoundException`` in the same
  shape. ``bodies`` keeps the bodies written.
- ``throttle_response``: webCRM's 429 (``Retry-After`` and the ``RetryAfterSeconds``
  body) for ``Faults``.

Persons live in memory; ``upsert`` stamps ``PersonUpdatedAt`` (milliseconds, written in
the account's ``zone`` without an offset, as webCRM writes times), ``delete`` removes a
person without trace, as webCRM's API shows deletions.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from aiohttp import web

from tests.fakes.server import FakeServer, Faults, run_standalone, standalone_arguments

APP_TOKEN: Final = "5d3c0b6e-8f0a-4b7c-9c1e-2a7f3e9b1d40"
MAX_SIZE: Final = 1000
# PersonDto fields beyond those every fake person starts with.
MORE_FIELDS: Final = frozenset(
    {f"PersonCheckMark{n}" for n in range(2, 11)} | {f"PersonCustom{n}" for n in range(2, 16)}
)
READ_ONLY: Final = frozenset(
    {"PersonCreatedAt", "PersonCreatedBy", "PersonUpdatedAt", "PersonUpdatedBy", "PersonName"}
)
TOKEN_LIFETIME_S: Final = 3600


class ScriptError(ValueError):
    pass


class FakeWebCrm:
    def __init__(
        self,
        *,
        clock: Callable[[], datetime] | None = None,
        zone: str = "UTC",
        token_lifetime: int = TOKEN_LIFETIME_S,
    ) -> None:
        self.persons: dict[int, dict[str, Any]] = {}
        self.logins = 0
        self.scripts: list[str] = []
        self.organisations: set[int] = {1}
        self.bodies: list[Any] = []
        self.serves_delete = True
        """False: DELETE /Persons/{id} answers as an API without that operation would."""
        self.retry_after_seconds = 1
        self.zone = ZoneInfo(zone)
        self.token_lifetime = token_lifetime
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tokens: dict[str, datetime] = {}
        self._refresh_tokens: set[str] = set()
        self._next_id = 1

    # --- data ------------------------------------------------------------------------

    def written(self, moment: datetime) -> str:
        """A time as webCRM writes it: local to the account, no offset, milliseconds."""
        return moment.astimezone(self.zone).replace(tzinfo=None).isoformat(timespec="milliseconds")

    def read(self, text: str) -> datetime:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=self.zone)

    def upsert(self, person_id: int | None = None, **fields: Any) -> dict[str, Any]:
        if person_id is None:
            person_id = self._next_id
        self._next_id = max(self._next_id, person_id + 1)
        old = self.persons.get(person_id)
        now = self._clock()
        if old is not None:
            # Distinct versions even within one clock tick.
            now = max(now, self.read(old["PersonUpdatedAt"]) + timedelta(milliseconds=1))
        person = dict(old) if old is not None else self._new(person_id, now)
        person.update(fields)
        person["PersonUpdatedAt"] = self.written(now)
        person["PersonName"] = f"{person['PersonFirstName']} {person['PersonLastName']}".strip()
        self.persons[person_id] = person
        return person

    def delete(self, person_id: int) -> None:
        del self.persons[person_id]

    def seed(self, count: int) -> None:
        for index in range(count):
            self.upsert(
                PersonFirstName=f"First{index}",
                PersonLastName=f"Last{index}",
                PersonEmail=f"person{index}@example.com",
            )

    def _new(self, person_id: int, now: datetime) -> dict[str, Any]:
        return {
            "PersonId": person_id,
            "PersonOrganisationId": 1,
            "PersonFirstName": "",
            "PersonLastName": "",
            "PersonName": "",
            "PersonEmail": "",
            "PersonEmail2": "",
            "PersonMobilePhone": "",
            "PersonDirectPhone": "",
            "PersonTitle": "",
            "PersonStatus": "Active",
            "PersonBlockMassEmail": False,
            "PersonCheckMark1": False,
            "PersonBirthday": "0001-01-01T00:00:00",
            "PersonCustom1": "",
            "PersonPlus1": "",
            "PersonPassword": "hunter2",
            "PersonMemberPassword": "",
            "PersonCampaignPassword": "",
            "PersonCreatedAt": self.written(now),
            "PersonCreatedBy": "API",
            "PersonUpdatedAt": self.written(now),
            "PersonUpdatedBy": "API",
        }

    # --- tokens ----------------------------------------------------------------------

    def expire_tokens(self) -> None:
        self._tokens.clear()

    def _issue(self) -> web.Response:
        self.logins += 1
        token, refresh = uuid.uuid4().hex * 2, uuid.uuid4().hex
        self._tokens[token] = self._clock() + timedelta(seconds=self.token_lifetime)
        self._refresh_tokens.add(refresh)
        return web.json_response(
            {
                "AccessToken": token,
                "RefreshToken": refresh,
                "Error": None,
                "ErrorDescription": None,
                "IsError": False,
                "ExpiresIn": self.token_lifetime,
                "TokenType": "Bearer",
            }
        )

    @staticmethod
    def _refused(description: str) -> web.Response:
        return web.json_response(
            {"IsError": True, "Error": "invalid_grant", "ErrorDescription": description},
            status=401,
        )

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expires = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        return expires is not None and self._clock() < expires

    # --- the API ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/Auth/ApiLogin", self.api_login)
        app.router.add_post("/Auth/ApiRefresh", self.api_refresh)
        app.router.add_get("/Persons", self.list_persons)
        app.router.add_post("/Persons", self.add_person)
        app.router.add_get("/Persons/{id}", self.get_person)
        app.router.add_put("/Persons/{id}", self.update_person)
        app.router.add_delete("/Persons/{id}", self.delete_person)
        app.router.add_get("/Queries", self.queries)
        return app

    def throttle_response(self, status: int) -> web.Response:
        """webCRM's answer over 250 requests per minute."""
        return web.json_response(
            {
                "RetryAfterSeconds": self.retry_after_seconds,
                "Message": "The request was throttled. The limit of 250 requests per minute "
                "is reached",
                "Type": "TooManyRequestsException",
            },
            status=status,
            headers={"Retry-After": str(self.retry_after_seconds)},
        )

    async def api_login(self, request: web.Request) -> web.Response:
        form = await request.post()
        code = form.get("authCode") or request.headers.get("authCode")
        if code != APP_TOKEN:
            return self._refused("Invalid application token")
        return self._issue()

    async def api_refresh(self, request: web.Request) -> web.Response:
        refresh = request.headers.get("refreshToken", "")
        if refresh not in self._refresh_tokens:
            return self._refused("Invalid refresh token")
        self._refresh_tokens.discard(refresh)
        return self._issue()

    def _paging(self, request: web.Request) -> tuple[int, int]:
        try:
            page, size = int(request.query.get("Page", "1")), int(request.query.get("Size", "10"))
        except ValueError:
            raise ScriptError("Page and Size must be integers") from None
        if page < 1 or not 1 <= size <= MAX_SIZE:
            raise ScriptError(f"Page starts at 1; Size is between 1 and {MAX_SIZE}")
        return page, size

    @staticmethod
    def _bad_request(message: str) -> web.Response:
        return web.json_response({"Message": message, "Type": "BadRequestException"}, status=400)

    async def list_persons(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"Message": "Unauthorized"}, status=401)
        try:
            page, size = self._paging(request)
        except ScriptError as exc:
            return self._bad_request(str(exc))
        ordered = [self.persons[i] for i in sorted(self.persons)]
        return web.json_response(ordered[(page - 1) * size : page * size])

    async def queries(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"Message": "Unauthorized"}, status=401)
        script = request.query.get("script", "")
        self.scripts.append(script)
        try:
            page, size = self._paging(request)
            query = Query.parse(script, read_time=self.read)
        except ScriptError as exc:
            return self._bad_request(str(exc))
        rows = query.run(list(self.persons.values()))
        return web.json_response(rows[(page - 1) * size : page * size])

    # --- writes ----------------------------------------------------------------------

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response({"Message": "Unauthorized"}, status=401)

    def _not_found(self, raw: str) -> web.Response | None:
        if raw.isdigit() and int(raw) in self.persons:
            return None
        return web.json_response(
            {"Message": f"Person with id {raw} not found", "Type": "NotFoundException"},
            status=404,
        )

    def _fields(self) -> frozenset[str]:
        template = self._new(0, self._clock())
        return frozenset(template) | MORE_FIELDS

    def _invalid(self, body: Any, *, person_id: int) -> str | None:
        """Why webCRM would refuse this PersonDto, if it would."""
        if not isinstance(body, dict):
            return "The person must be a JSON object"
        if body.get("PersonId") != person_id:
            return f"PersonId must be {person_id}"
        unknown = set(body) - self._fields()
        if unknown:
            return f"Unknown field {sorted(unknown)[0]}"
        organisation = body.get("PersonOrganisationId")
        if organisation is not None and organisation not in self.organisations:
            return f"Organisation {organisation} does not exist"
        return None

    def _writable(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in body.items() if k not in READ_ONLY and k != "PersonId"}

    async def get_person(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        raw = request.match_info["id"]
        return self._not_found(raw) or web.json_response(self.persons[int(raw)])

    async def add_person(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        body = await request.json()
        problem = self._invalid(body, person_id=0)
        if problem is not None:
            return self._bad_request(problem)
        self.bodies.append(body)
        person = self.upsert(**self._writable(body))
        return web.json_response(person["PersonId"])

    async def update_person(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        raw = request.match_info["id"]
        missing = self._not_found(raw)
        if missing is not None:
            return missing
        person_id = int(raw)
        body = await request.json()
        problem = self._invalid(body, person_id=person_id)
        if problem is not None:
            return self._bad_request(problem)
        self.bodies.append(body)
        old = self.persons[person_id]
        # The whole person is replaced: what the body leaves out is emptied.
        replaced = self._new(person_id, self._clock())
        replaced.update({k: old[k] for k in ("PersonCreatedAt", "PersonCreatedBy")})
        replaced.update({k: old[k] for k in ("PersonUpdatedAt",)})
        replaced.update(self._writable(body))
        self.persons[person_id] = replaced
        self.upsert(person_id)
        return web.Response(status=200)

    async def delete_person(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        raw = request.match_info["id"]
        if not self.serves_delete:
            message = "The requested resource does not support http method 'DELETE'."
            return web.json_response({"Message": message}, status=405)
        missing = self._not_found(raw)
        if missing is not None:
            return missing
        self.delete(int(raw))
        return web.Response(status=200)


# --- the query subset ----------------------------------------------------------------

TOKEN: Final = re.compile(
    r"\s*(?:(?P<string>'[^']*')|(?P<number>-?\d+(?:\.\d+)?)|(?P<op><>|<=|>=|=|<|>)"
    r"|(?P<paren>[(),*])|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"
)
Condition = Callable[[dict[str, Any]], bool]


def tokenize(script: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = script.strip()
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ScriptError(f"cannot read the script at {text[position : position + 20]!r}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class Query:
    """``SELECT * FROM Person [WHERE condition] [ORDER BY field [ASC|DESC], ...]``."""

    def __init__(self, tokens: list[tuple[str, str]], read_time: Callable[[str], datetime]):
        self._tokens = tokens
        self._at = 0
        self._read_time = read_time
        self.condition: Condition = lambda _row: True
        self.order: list[tuple[str, bool]] = []

    @classmethod
    def parse(cls, script: str, *, read_time: Callable[[str], datetime]) -> Query:
        query = cls(tokenize(script), read_time)
        for word in ("SELECT", "*", "FROM"):
            query._expect(word)
        if query._next_word().lower() != "person":
            raise ScriptError("only the Person table is served by this fake")
        if query._peek_word("WHERE"):
            query._at += 1
            query.condition = query._or()
        if query._peek_word("ORDER"):
            query._at += 1
            query._expect("BY")
            query.order = query._order()
        if query._at != len(query._tokens):
            raise ScriptError(f"unexpected {query._tokens[query._at][1]!r}")
        return query

    def run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        selected = [row for row in rows if self.condition(row)]
        # Stable sorts from the last key to the first give the ORDER BY of all keys.
        for field, descending in reversed(self.order):
            selected.sort(key=functools.partial(self._sortable, field), reverse=descending)
        return selected

    def _sortable(self, field: str, row: dict[str, Any]) -> Any:
        value = row.get(field)
        return self._read_time(value) if isinstance(value, str) and _is_time(value) else value

    def _order(self) -> list[tuple[str, bool]]:
        order = [self._order_item()]
        while self._peek(","):
            self._at += 1
            order.append(self._order_item())
        return order

    def _order_item(self) -> tuple[str, bool]:
        field = self._next_word()
        descending = False
        if self._peek_word("ASC") or self._peek_word("DESC"):
            descending = self._next_word().upper() == "DESC"
        return field, descending

    def _or(self) -> Condition:
        parts = [self._and()]
        while self._peek_word("OR"):
            self._at += 1
            parts.append(self._and())
        return lambda row: any(part(row) for part in parts)

    def _and(self) -> Condition:
        parts = [self._factor()]
        while self._peek_word("AND"):
            self._at += 1
            parts.append(self._factor())
        return lambda row: all(part(row) for part in parts)

    def _factor(self) -> Condition:
        if self._peek("("):
            self._at += 1
            inner = self._or()
            self._expect(")")
            return inner
        field = self._next_word()
        kind, op = self._take()
        if kind != "op":
            raise ScriptError(f"expected a comparison after {field}")
        kind, literal = self._take()
        if kind == "string":
            value: Any = literal[1:-1]
        elif kind == "number":
            value = float(literal) if "." in literal else int(literal)
        else:
            raise ScriptError(f"expected a value after {field} {op}")
        return self._comparison(field, op, value)

    def _comparison(self, field: str, op: str, value: Any) -> Condition:
        if isinstance(value, str) and _is_time(value):
            try:
                value = self._read_time(value)
            except ValueError:
                raise ScriptError(f"not a date-time: {value!r}") from None

        def compare(row: dict[str, Any]) -> bool:
            current = row.get(field)
            if isinstance(value, datetime):
                if not isinstance(current, str) or not _is_time(current):
                    return False
                current = self._read_time(current)
            if current is None:
                return False
            return _OPERATORS[op](current, value)

        return compare

    def _take(self) -> tuple[str, str]:
        if self._at >= len(self._tokens):
            raise ScriptError("the script ends too early")
        token = self._tokens[self._at]
        self._at += 1
        return token

    def _next_word(self) -> str:
        kind, value = self._take()
        if kind != "word":
            raise ScriptError(f"expected a name, got {value!r}")
        return value

    def _expect(self, text: str) -> None:
        _kind, value = self._take()
        if value.upper() != text:
            raise ScriptError(f"expected {text}, got {value!r}")

    def _peek(self, text: str) -> bool:
        return self._at < len(self._tokens) and self._tokens[self._at][1] == text

    def _peek_word(self, word: str) -> bool:
        return self._at < len(self._tokens) and self._tokens[self._at][1].upper() == word


_OPERATORS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
_TIME: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def _is_time(value: Any) -> bool:
    return isinstance(value, str) and _TIME.match(value) is not None


def main() -> None:
    args = standalone_arguments("fake webCRM REST API").parse_args()
    crm = FakeWebCrm()
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
