"""The "direct" approach, the peer of crmsync's end-to-end figures (bench/e2e_compare.py).

Vendor sync guides sketch a webhook handler that upserts each contact change straight
into PostgreSQL: no broker, no mapping rules, no version order, no audit trail. That is
about the least work a sync can do per event, so measured beside crmsync on the same
load and the same server it shows what crmsync's stages (ingest, Kafka, the stateful
exactly-once mapper, the batching writer) cost per event.

It takes HubSpot-webhooks-v3-shaped batches at POST /webhooks/hubspot and by default
runs one autocommitted upsert per event, one round trip and one commit each, as the
guides write it. ``--batched`` writes a request's events in one transaction with
executemany (psycopg pipelines it): the stronger peer a careful hand would write.

With ``--secret-env`` it checks X-HubSpot-Signature-v3 (with crmsync's own signing
rules) before writing, as any handler reachable from the internet has to, so both
sides do the same work per request before they write.

Each upsert merges the event's property into the contact's jsonb document and sets
``updated_at`` to the moment it writes the row (``clock_timestamp()``, a fraction of a
millisecond before the commit): ``max(updated_at)`` is the direct side's last write.
``now()`` would do as well in autocommit, but with ``--batched`` it is the start of
the request's transaction, which would credit the direct side with time it had not
yet spent.

Usage: python -m bench.direct_handler --dsn DSN [--port P] [--batched] [--secret-env VAR]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from services.core.bearer import same
from services.ingest.auth import check_timestamp
from services.ingest.connectors.base import AuthError
from services.ingest.connectors.hubspot.push import (
    TIMESTAMP_TOLERANCE_S,
    V3_SIGNATURE,
    V3_TIMESTAMP,
    v3_signature,
)

DEFAULT_PORT: Final = 36099
# As many connections as the benchmark keeps requests in flight.
POOL_MIN: Final = 4
POOL_MAX: Final = 16
MAX_BODY_BYTES: Final = 8 * 1024 * 1024

DDL: Final = """
CREATE TABLE IF NOT EXISTS direct_profiles (
    hubspot_id  text PRIMARY KEY,
    attrs       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
UPSERT: Final = """
INSERT INTO direct_profiles (hubspot_id, attrs) VALUES (%s, %s::jsonb)
ON CONFLICT (hubspot_id) DO UPDATE
SET attrs = direct_profiles.attrs || excluded.attrs, updated_at = clock_timestamp()
"""

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]
Row = tuple[str, str]


def upsert_rows(events: list[dict[str, Any]]) -> list[Row]:
    """(contact id, {property: value} as JSON) per event, in the request's order."""
    return [
        (str(event["objectId"]), json.dumps({event["propertyName"]: event["propertyValue"]}))
        for event in events
    ]


def check_signature(secret: str, request: web.Request, body: bytes) -> None:
    """Raise AuthError unless the request carries a fresh, valid v3 signature."""
    timestamp = request.headers.get(V3_TIMESTAMP, "")
    signature = request.headers.get(V3_SIGNATURE, "")
    if not timestamp or not signature:
        raise AuthError(f"missing {V3_TIMESTAMP} or {V3_SIGNATURE}")
    check_timestamp(timestamp, now=datetime.now(UTC), tolerance_seconds=TIMESTAMP_TOLERANCE_S)
    expected = v3_signature(
        secret, method=request.method, url=str(request.url), body=body, timestamp=timestamp
    )
    if not same(signature, expected):
        raise AuthError(f"invalid {V3_SIGNATURE}")


@dataclass
class DirectHandler:
    pool: Pool
    batched: bool
    secret: str | None

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.secret is not None:
            try:
                check_signature(self.secret, request, body)
            except AuthError as exc:
                return web.json_response({"error": str(exc)}, status=401)
        rows = upsert_rows(json.loads(body))
        if self.batched:
            await self._write_in_one_transaction(rows)
        else:
            await self._write_each(rows)
        return web.json_response({"ok": True})

    async def _write_each(self, rows: list[Row]) -> None:
        """One statement and one commit per event: the guides' handler."""
        async with self.pool.connection() as conn:
            for row in rows:
                await conn.execute(UPSERT, row)

    async def _write_in_one_transaction(self, rows: list[Row]) -> None:
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(UPSERT, rows)

    async def ready(self, _request: web.Request) -> web.Response:
        """Answers once the pool is open and the table exists (the app starts after)."""
        return web.json_response({"ready": True})

    async def close(self, _app: web.Application) -> None:
        await self.pool.close()


async def make_app(dsn: str, *, batched: bool, secret: str | None) -> web.Application:
    pool: Pool = AsyncConnectionPool(
        dsn, min_size=POOL_MIN, max_size=POOL_MAX, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True)
    async with pool.connection() as conn:
        await conn.execute(DDL)
    handler = DirectHandler(pool=pool, batched=batched, secret=secret)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/webhooks/hubspot", handler.webhook)
    app.router.add_get("/readyz", handler.ready)
    app.on_cleanup.append(handler.close)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", required=True, help="the database to write to")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--batched", action="store_true", help="one transaction per request")
    parser.add_argument(
        "--secret-env", help="environment variable holding the HubSpot app's client secret"
    )
    args = parser.parse_args()
    secret = None
    if args.secret_env:
        secret = os.environ.get(args.secret_env)
        if not secret:
            parser.error(f"--secret-env: ${args.secret_env} is not set")
    app = make_app(args.dsn, batched=args.batched, secret=secret)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
