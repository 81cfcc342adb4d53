"""A fake of Experiture's public records API (the CDP of crmsync's product documents),
as its developer documentation describes it, for the ``cdp`` destination's tests.

Served under ``/public/v1``:

- ``POST /records/{object_name}/upsert`` (``{"record": {...}, "matchKey": ...}``) and
  ``POST /records/{object_name}/upsert-batch`` (``{"records": [...], "matchKey": ...}``,
  at most 10,000 records, a body of at most 10 MB, else 413);
- a bearer token (401 ``CDP_ETL.AUTH.UNAUTHORIZED`` without the right one);
- ``Idempotency-Key``: the same key with the same body is answered with the first
  answer for 24 hours, without writing again;
- the workspace schema: a field it does not have is a 422
  ``CDP_ETL.VALIDATION.REQUEST_SCHEMA``; a ``matchKey`` that is not an identity key, an
  empty record, or an email that is not one is a 400 ``CDP_ETL.VALIDATION.REQUEST_INVALID``
  whose ``error.details.path`` names the record (``records[2].email``), as the
  documentation's example does; the whole request is checked before anything is
  written;
- rows merged field by field, last write wins: an omitted field keeps its value, null
  clears it; a record finds its row by ``matchKey``, else by another identity key it
  carries, else is inserted;
- the documented envelopes: ``{"success": true, "data": {...}, "correlationId"}`` and
  ``{"success": false, "correlationId", "error": {"code", "message", "details"}}``,
  an ``x-correlation-id`` header on every answer, and 429 ``CDP_ETL.RATE.LIMITED``
  with ``Retry-After`` when the shared ``Faults`` throttle.

The documentation leaves open how a batch answer reports records one by one; this fake
answers a batch like a single upsert, with ``acceptedRecords`` its record count, and a
record lacking its ``matchKey`` field is a 400 naming it.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiohttp import web

from tests.fakes.server import FakeServer, Faults, run_standalone, standalone_arguments

TOKEN: Final = "experiture-test-token"
MAX_BODY_BYTES: Final = 10 * 1024 * 1024
MAX_BATCH: Final = 10_000
IDEMPOTENCY_TTL_S: Final = 24 * 3600
EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.path = status, code, message, path


@dataclass
class Workspace:
    fields: set[str]
    """The profiles object's schema."""
    identity_keys: set[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    upserts: int = 0
    """Records written, a repeated idempotent request not counted."""
    replayed: int = 0
    _by_identity: dict[tuple[str, Any], dict[str, Any]] = field(default_factory=dict)
    _answers: dict[str, tuple[bytes, float, int, bytes]] = field(default_factory=dict)

    def seed(self, row: dict[str, Any]) -> None:
        """A row the workspace holds before the test."""
        self.rows.append(row)
        for key in self.identity_keys & row.keys():
            self._by_identity[(key, row[key])] = row

    def row(self, key: str, value: Any) -> dict[str, Any] | None:
        return self._by_identity.get((key, value))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES + 1024)
        app.router.add_post("/public/v1/records/{object_name}/upsert", self._single)
        app.router.add_post("/public/v1/records/{object_name}/upsert-batch", self._batch)
        app.router.add_get("/", self._hello)
        return app

    async def _hello(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _single(self, request: web.Request) -> web.Response:
        return await self._write(request, batch=False)

    async def _batch(self, request: web.Request) -> web.Response:
        return await self._write(request, batch=True)

    async def _write(self, request: web.Request, *, batch: bool) -> web.Response:
        correlation = str(uuid.uuid4())
        try:
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                raise Refused(
                    401, "CDP_ETL.AUTH.UNAUTHORIZED", "Token missing, expired, or revoked"
                )
            body = await request.read()
            if len(body) > MAX_BODY_BYTES:
                raise Refused(413, "CDP_ETL.VALIDATION.REQUEST_INVALID", "Request body > 10 MB")
            key = request.headers.get("Idempotency-Key")
            digest = hashlib.sha256(body).digest()
            if key is not None:
                cached = self._answers.get(key)
                if (
                    cached is not None
                    and cached[0] == digest
                    and time.time() - cached[1] < IDEMPOTENCY_TTL_S
                ):
                    self.replayed += 1
                    return _answer(cached[2], cached[3], correlation)
            records, match_key = self._parse(body, batch=batch)
            self._check(records, match_key, batch=batch)
            for record in records:
                self._upsert(record, match_key)
            self.upserts += len(records)
            status, payload = (
                200,
                orjson.dumps(
                    {
                        "success": True,
                        "data": {
                            "operation": "upsert",
                            "objectName": request.match_info["object_name"],
                            "accepted": True,
                            "acceptedAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                            "acceptedRecords": len(records),
                            "matchKey": match_key,
                        },
                        "correlationId": correlation,
                    }
                ),
            )
            if key is not None:
                self._answers[key] = (digest, time.time(), status, payload)
            return _answer(status, payload, correlation)
        except Refused as refused:
            error: dict[str, Any] = {"code": refused.code, "message": refused.message}
            if refused.path is not None:
                error["details"] = {"path": refused.path}
            payload = orjson.dumps({"success": False, "correlationId": correlation, "error": error})
            return _answer(refused.status, payload, correlation)

    def _parse(self, body: bytes, *, batch: bool) -> tuple[list[dict[str, Any]], str]:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Refused(
                400, "CDP_ETL.VALIDATION.REQUEST_INVALID", f"Malformed JSON: {exc}"
            ) from exc
        match_key = document.get("matchKey", "email") if isinstance(document, dict) else None
        records = document.get("records") if batch else [document.get("record")]
        if not isinstance(records, list) or not records or not isinstance(match_key, str):
            raise Refused(400, "CDP_ETL.VALIDATION.REQUEST_INVALID", "missing required field")
        if len(records) > MAX_BATCH:
            raise Refused(400, "CDP_ETL.VALIDATION.REQUEST_INVALID", "more than 10,000 records")
        return records, match_key

    def _check(self, records: list[Any], match_key: str, *, batch: bool) -> None:
        if match_key not in self.identity_keys:
            raise Refused(
                400,
                "CDP_ETL.VALIDATION.REQUEST_INVALID",
                f"matchKey {match_key} is not an identity key",
            )
        for index, record in enumerate(records):
            where = f"records[{index}]" if batch else "record"
            if not isinstance(record, dict) or not record:
                raise Refused(
                    400,
                    "CDP_ETL.VALIDATION.REQUEST_INVALID",
                    f"{where}: must contain at least one property",
                    where,
                )
            for name in record:
                if name not in self.fields:
                    raise Refused(
                        422,
                        "CDP_ETL.VALIDATION.REQUEST_SCHEMA",
                        f"{where}.{name}: field does not exist in the object schema",
                        f"{where}.{name}",
                    )
            if record.get(match_key) is None:
                raise Refused(
                    400,
                    "CDP_ETL.VALIDATION.REQUEST_INVALID",
                    f"{where}.{match_key}: required as the matchKey",
                    f"{where}.{match_key}",
                )
            email = record.get("email")
            if email is not None and not (isinstance(email, str) and EMAIL.match(email)):
                raise Refused(
                    400,
                    "CDP_ETL.VALIDATION.REQUEST_INVALID",
                    f"{where}.email: invalid email format",
                    f"{where}.email",
                )

    def _upsert(self, record: dict[str, Any], match_key: str) -> None:
        row = self.row(match_key, record[match_key])
        if row is None:
            row = next(
                (
                    found
                    for key in sorted(self.identity_keys - {match_key})
                    if record.get(key) is not None and (found := self.row(key, record[key]))
                ),
                None,
            )
        if row is None:
            row = {}
            self.rows.append(row)
        for name, value in record.items():
            if name in self.identity_keys and name in row:
                self._by_identity.pop((name, row[name]), None)
            if value is None:
                row.pop(name, None)
            else:
                row[name] = value
        for key in self.identity_keys & row.keys():
            self._by_identity[(key, row[key])] = row


def _answer(status: int, payload: bytes, correlation: str) -> web.Response:
    return web.Response(
        status=status,
        body=payload,
        content_type="application/json",
        headers={"x-correlation-id": correlation},
    )


def _throttled(_status: int) -> web.Response:
    return web.json_response(
        {
            "success": False,
            "error": {
                "code": "CDP_ETL.RATE.LIMITED",
                "message": "Rate limit exceeded. Retry after 1s.",
            },
        },
        status=429,
        headers={"Retry-After": "1", "x-correlation-id": str(uuid.uuid4())},
    )


def server(workspace: Workspace, faults: Faults | None = None) -> FakeServer:
    faults = faults or Faults()
    faults.throttle_response = _throttled
    return FakeServer(workspace.app(), faults)


def main() -> None:
    args = standalone_arguments("A fake of Experiture's public records API").parse_args()
    workspace = Workspace(
        fields={"email", "first_name", "last_name", "hubspot_contact_id", "newsletter"},
        identity_keys={"email", "hubspot_contact_id"},
    )
    run_standalone(server(workspace), args.port)


if __name__ == "__main__":
    main()
