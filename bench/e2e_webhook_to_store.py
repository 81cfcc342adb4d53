"""End-to-end benchmark: webhooks in, profiles stored.

Starts its own Kafka broker (unless CRMSYNC_BENCH_BOOTSTRAP names one) and the three
services as real processes on a fresh topic prefix and SQLite file, then runs two
phases through the demo source's generic webhook:

1. throughput: N events in batches of B per request, C requests in flight; reports
   events/s accepted by ingest and events/s end to end (first request to last
   profile stored).
2. latency: events at a steady rate R (one per request); reports p50/p99 from the
   moment a webhook is sent to the moment its profile row is committed.

Figures are printed and written to bench/results/e2e_webhook_to_store.json.
Usage: python bench/e2e_webhook_to_store.py [--events N] [--batch B] [--concurrency C]
       [--rate R] [--latency-events M]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import bench_broker, percentile, write_results
from tests.support.services import DEMO_TOKEN, Stack


def contact(index: int, *, run: str) -> dict[str, Any]:
    return {
        "id": f"{run}-{index}",
        "updated_at": datetime.now(UTC).isoformat(),
        "email": f"bench-{run}-{index}@example.com",
        "first_name": f"N{index}",
    }


async def post(session: aiohttp.ClientSession, url: str, body: list[dict[str, Any]]) -> None:
    while True:
        async with session.post(
            url, json=body, headers={"Authorization": f"Bearer {DEMO_TOKEN}"}
        ) as response:
            if response.status == 200:
                return
            if response.status != 503:
                raise RuntimeError(f"webhook answered {response.status}: {await response.text()}")
        await asyncio.sleep(0.05)


def stored(db: Path, prefix: str) -> dict[str, int]:
    """record id -> written_at (µs) for this run's profiles."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT source_record_id, written_at FROM attributes "
            "WHERE name = 'first_name' AND source_record_id LIKE ?",
            (f"{prefix}-%",),
        )
        return {record_id: written for record_id, written in rows}


def wait_stored(db: Path, prefix: str, count: int, timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            rows = stored(db, prefix)
        except sqlite3.OperationalError:
            rows = {}
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


async def throughput(stack: Stack, *, events: int, batch: int, concurrency: int) -> dict[str, Any]:
    url = f"{stack['ingest'].url}/webhooks/demo"
    bodies = [
        [contact(i, run="tp") for i in range(start, min(start + batch, events))]
        for start in range(0, events, batch)
    ]
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    connector = aiohttp.TCPConnector(limit=concurrency)
    started = time.perf_counter()
    wall_start = time.time()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                await post(session, url, queue.get_nowait())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    accepted_s = time.perf_counter() - started
    rows = await asyncio.to_thread(wait_stored, stack.db_path, "tp", events, 300)
    if len(rows) < events:
        raise RuntimeError(f"only {len(rows)} of {events} profiles stored")
    last_written_s = max(rows.values()) / 1e6 - wall_start
    return {
        "events": events,
        "batch": batch,
        "concurrency": concurrency,
        "ingest_events_per_s": round(events / accepted_s),
        "end_to_end_events_per_s": round(events / last_written_s),
    }


async def latency(stack: Stack, *, events: int, rate: float) -> dict[str, Any]:
    url = f"{stack['ingest'].url}/webhooks/demo"
    sent_at: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        tasks = []
        begin = time.perf_counter()
        for i in range(events):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = [contact(i, run="lat")]
            sent_at[body[0]["id"]] = time.time()
            tasks.append(asyncio.create_task(post(session, url, body)))
        await asyncio.gather(*tasks)
    rows = await asyncio.to_thread(wait_stored, stack.db_path, "lat", events, 120)
    latencies = sorted(rows[r] / 1e6 - sent_at[r] for r in rows)
    if len(latencies) < events:
        raise RuntimeError(f"only {len(latencies)} of {events} profiles stored")
    return {
        "events": events,
        "rate_per_s": rate,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--latency-events", type=int, default=2_000)
    args = parser.parse_args()

    with bench_broker() as bootstrap, tempfile.TemporaryDirectory() as workdir:
        stack = Stack(bootstrap=bootstrap, workdir=Path(workdir))
        try:
            stack.start()
            tp = asyncio.run(
                throughput(
                    stack, events=args.events, batch=args.batch, concurrency=args.concurrency
                )
            )
            lat = asyncio.run(latency(stack, events=args.latency_events, rate=args.rate))
        finally:
            stack.stop()
    write_results("e2e_webhook_to_store", {"throughput": tp, "latency": lat})


if __name__ == "__main__":
    main()
