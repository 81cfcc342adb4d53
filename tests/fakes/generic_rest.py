"""A fake JSON API for the generic REST poll: contacts changed since a time, cursor paging.

``GET /v1/contacts?updated_since=<ISO 8601>&limit=N&cursor=C`` answers
``{"data": [...], "next_cursor": "..." | null, "total": N}`` with records ordered by
``updated_at`` then ``id`` (oldest change first), the shape the generic connector's
config describes. Bearer token required. Records are changed by the test through
``upsert``/``delete``; each change stamps ``updated_at`` from the fake's clock.
"""

from __future__ import annotations

import base64
import bisect
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from tests.fakes.server import FakeServer, Faults, run_standalone, standalone_arguments

TOKEN = "rest-token-1"


def iso(moment: datetime) -> str:
    """Always with microseconds, so that the strings sort like the times they name."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeRestCrm:
    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tick = 0
        self._ordered: list[tuple[str, str]] | None = None  # (updated_at, id), sorted

    def upsert(self, record_id: str, **fields: Any) -> dict[str, Any]:
        # Distinct, increasing times even within one clock tick.
        self._tick += 1
        stamp = self._clock() + timedelta(microseconds=self._tick)
        record = {**self.records.get(record_id, {}), **fields, "id": record_id}
        record["updated_at"] = iso(stamp)
        self.records[record_id] = record
        self._ordered = None
        return record

    def _order(self) -> list[tuple[str, str]]:
        if self._ordered is None:
            self._ordered = sorted((r["updated_at"], r["id"]) for r in self.records.values())
        return self._ordered

    def seed(self, count: int, *, prefix: str = "c") -> None:
        for index in range(count):
            self.upsert(
                f"{prefix}{index}",
                email=f"{prefix}{index}@example.com",
                first_name=f"First{index}",
                tags=["a", "b"],
            )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/contacts", self.list_contacts)
        return app

    async def list_contacts(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            since = request.query.get("updated_since")
            since_at = datetime.fromisoformat(since.replace("Z", "+00:00")) if since else None
            limit = int(request.query.get("limit", "100"))
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        order = self._order()
        # ISO 8601 UTC strings of one format sort like the times they name.
        start = bisect.bisect_left(order, (iso(since_at), "")) if since_at else 0
        cursor = request.query.get("cursor")
        if cursor:
            after = tuple(json.loads(base64.urlsafe_b64decode(cursor)))
            start = max(start, bisect.bisect_right(order, after))
        keys = order[start : start + limit]
        page = [self.records[record_id] for _updated, record_id in keys]
        next_cursor = None
        if start + limit < len(order) and keys:
            next_cursor = base64.urlsafe_b64encode(json.dumps(list(keys[-1])).encode()).decode()
        total = len(order) - (bisect.bisect_left(order, (iso(since_at), "")) if since_at else 0)
        return web.json_response({"data": page, "next_cursor": next_cursor, "total": total})


def main() -> None:
    args = standalone_arguments("fake generic REST CRM").parse_args()
    crm = FakeRestCrm()
    crm.seed(args.records)
    faults = Faults(
        max_requests_per_second=args.rate_limit, error_rate=args.error_rate, seed=args.seed
    )
    run_standalone(FakeServer(crm.app(), faults), args.port)


if __name__ == "__main__":
    main()
