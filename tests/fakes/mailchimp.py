"""A fake of Mailchimp's Marketing API 3.0 (one audience's members), as its reference
describes it, for the ``mailchimp`` destination's tests.

Served under ``/3.0``:

- ``POST /lists/{list_id}`` (batch subscribe or unsubscribe): ``{"members": [...],
  "update_existing": bool}``, at most 500 members (more is a 400). Each member needs
  an ``email_address``; ``status`` and ``status_if_new`` are one of subscribed,
  unsubscribed, cleaned, pending, transactional (another value is a 400 for the
  request). A new member takes ``status``, else ``status_if_new``; an existing one
  changes status only with ``update_existing`` and a ``status``, and without
  ``update_existing`` it is an ``ERROR_CONTACT_EXISTS`` error. ``merge_fields`` are
  merged tag by tag. The 200 answer: ``new_members``, ``updated_members`` (members as
  the API shows them, ``id`` the subscriber hash), ``errors`` (``email_address``,
  ``error``, ``error_code``, ``field``, ``field_message``), ``total_created``,
  ``total_updated``, ``error_count``, ``_links``.
- ``POST /lists/{list_id}/members/{subscriber_hash}/actions/delete-permanent``: 204;
  404 for a hash that is no member. A permanently deleted address cannot be imported
  again: a later batch naming it gets an ``ERROR_GENERIC`` member error.
- HTTP Basic, any user name and the API key as password; otherwise 401 "API Key
  Invalid". Errors are ``application/problem+json``: ``type``, ``title``, ``status``,
  ``detail``, ``instance``. Throttled (the shared ``Faults``): 429 "Too Many
  Requests", which the reference explains by the 10 simultaneous connections limit and
  gives no Retry-After for.

An email that is not one is a member error (``ERROR_GENERIC`` on ``email_address``), as
the API reports invalid addresses; the reference leaves open which other member
checks there are, and this fake makes none.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import web

from tests.fakes.server import FakeServer, Faults, run_standalone, standalone_arguments

API_KEY: Final = "0123456789abcdef0123456789abcdef-us6"
MAX_MEMBERS: Final = 500
STATUSES: Final = frozenset({"subscribed", "unsubscribed", "cleaned", "pending", "transactional"})
EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ERRORS_DOC: Final = "https://mailchimp.com/developer/marketing/docs/errors/"


def subscriber_hash(email: str) -> str:
    return hashlib.md5(email.lower().encode(), usedforsecurity=False).hexdigest()


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


@dataclass
class Audience:
    list_id: str
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Subscriber hash -> the member as the API shows it."""
    forgotten: set[str] = field(default_factory=set)
    """Subscriber hashes of permanently deleted members."""
    batches: list[int] = field(default_factory=list)
    """Members in each batch request taken, in order."""
    deletions: int = 0

    def member(self, email: str) -> dict[str, Any] | None:
        return self.members.get(subscriber_hash(email))

    def seed(self, email: str, status: str, **merge_fields: Any) -> None:
        self._create({"email_address": email, "status": status, "merge_fields": merge_fields})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/3.0/lists/{list_id}", self._batch)
        app.router.add_post(
            "/3.0/lists/{list_id}/members/{hash}/actions/delete-permanent", self._delete
        )
        return app

    async def _batch(self, request: web.Request) -> web.Response:
        try:
            self._authorized(request)
            self._this_list(request)
            body = await _json(request)
            members = body.get("members") if isinstance(body, dict) else None
            if not isinstance(members, list):
                raise Problem(400, "Invalid Resource", "members: required, an array")
            if len(members) > MAX_MEMBERS:
                raise Problem(
                    400, "Invalid Resource", f"members: at most {MAX_MEMBERS} items per call"
                )
            for index, member in enumerate(members):
                _check_member(index, member)
            update_existing = bool(body.get("update_existing", False))
            answer = self._apply(members, update_existing=update_existing)
        except Problem as problem:
            return _problem(problem)
        self.batches.append(len(members))
        return web.json_response(answer)

    def _apply(self, members: list[dict[str, Any]], *, update_existing: bool) -> dict[str, Any]:
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for member in members:
            email = member["email_address"]
            key = subscriber_hash(email)
            if not EMAIL.match(email):
                errors.append(
                    _member_error(
                        email,
                        f"{email} looks fake or invalid, please enter a real email address.",
                        field="email_address",
                        field_message="Invalid email address",
                    )
                )
            elif key in self.forgotten:
                errors.append(
                    _member_error(
                        email,
                        f"{email} was permanently deleted and cannot be re-imported. "
                        "The contact must re-subscribe to get back on the list.",
                    )
                )
            elif key not in self.members:
                if member.get("status", member.get("status_if_new")) is None:
                    errors.append(
                        _member_error(email, "status: a new member needs a status", "status")
                    )
                else:
                    created.append(self._create(member))
            elif not update_existing:
                errors.append(
                    _member_error(
                        email,
                        f"{email} is already a list member. Use PUT to insert or update "
                        "list members.",
                        code="ERROR_CONTACT_EXISTS",
                    )
                )
            else:
                updated.append(self._update(self.members[key], member))
        return {
            "new_members": created,
            "updated_members": updated,
            "errors": errors,
            "total_created": len(created),
            "total_updated": len(updated),
            "error_count": len(errors),
            "_links": [],
        }

    def _create(self, member: dict[str, Any]) -> dict[str, Any]:
        email = member["email_address"]
        now = datetime.now(UTC).isoformat()
        stored = {
            "id": subscriber_hash(email),
            "email_address": email,
            "unique_email_id": uuid.uuid4().hex[:10],
            "status": member.get("status") or member["status_if_new"],
            "merge_fields": dict(member.get("merge_fields") or {}),
            "list_id": self.list_id,
            "timestamp_signup": now,
            "last_changed": now,
        }
        self.members[stored["id"]] = stored
        return stored

    def _update(self, stored: dict[str, Any], member: dict[str, Any]) -> dict[str, Any]:
        if member.get("status") is not None:
            stored["status"] = member["status"]
        stored["merge_fields"].update(member.get("merge_fields") or {})
        stored["last_changed"] = datetime.now(UTC).isoformat()
        return stored

    async def _delete(self, request: web.Request) -> web.Response:
        try:
            self._authorized(request)
            self._this_list(request)
            key = request.match_info["hash"]
            if key not in self.members:
                raise Problem(
                    404, "Resource Not Found", "The requested resource could not be found."
                )
        except Problem as problem:
            return _problem(problem)
        del self.members[key]
        self.forgotten.add(key)
        self.deletions += 1
        return web.Response(status=204)

    def _authorized(self, request: web.Request) -> None:
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            password = base64.b64decode(encoded).decode().partition(":")[2]
        except ValueError:
            password = ""
        if scheme != "Basic" or password != API_KEY:
            raise Problem(
                401,
                "API Key Invalid",
                "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            )

    def _this_list(self, request: web.Request) -> None:
        if request.match_info["list_id"] != self.list_id:
            raise Problem(404, "Resource Not Found", "The requested resource could not be found.")


def _check_member(index: int, member: Any) -> None:
    """What makes the whole request invalid: a member that is not one."""
    if not isinstance(member, dict) or not isinstance(member.get("email_address"), str):
        raise Problem(400, "Invalid Resource", f"members.{index}.email_address: required")
    for name in ("status", "status_if_new"):
        value = member.get(name)
        if value is not None and value not in STATUSES:
            raise Problem(
                400,
                "Invalid Resource",
                f"members.{index}.{name}: value must be one of {', '.join(sorted(STATUSES))}",
            )
    merge_fields = member.get("merge_fields")
    if merge_fields is not None and not isinstance(merge_fields, dict):
        raise Problem(400, "Invalid Resource", f"members.{index}.merge_fields: an object")


def _member_error(
    email: str,
    error: str,
    field: str | None = None,
    *,
    field_message: str | None = None,
    code: str = "ERROR_GENERIC",
) -> dict[str, Any]:
    return {
        "email_address": email,
        "error": error,
        "error_code": code,
        "field": field or "",
        "field_message": field_message or "",
    }


async def _json(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise Problem(
            400, "JSON Parse Error", f"We encountered an unspecified JSON parsing error: {exc}"
        ) from exc


def _problem(problem: Problem) -> web.Response:
    return web.Response(
        status=problem.status,
        body=orjson.dumps(
            {
                "type": ERRORS_DOC,
                "title": problem.title,
                "status": problem.status,
                "detail": problem.detail,
                "instance": str(uuid.uuid4()),
            }
        ),
        content_type="application/problem+json",
    )


def _throttled(_status: int) -> web.Response:
    return _problem(
        Problem(
            429,
            "Too Many Requests",
            "You have exceeded the limit of 10 simultaneous connections.",
        )
    )


def server(audience: Audience, faults: Faults | None = None) -> FakeServer:
    faults = faults or Faults()
    faults.throttle_response = _throttled
    return FakeServer(audience.app(), faults)


def main() -> None:
    args = standalone_arguments("A fake of Mailchimp's Marketing API (list members)").parse_args()
    run_standalone(server(Audience(list_id="a1b2c3d4e5")), args.port)


if __name__ == "__main__":
    main()
