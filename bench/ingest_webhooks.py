"""Webhook ingest benchmark: batches of contacts accepted into Kafka (acks=all).

A real ingest process and a real broker on this machine; the load comes from this
process over loopback with keep-alive connections. Two phases:

1. throughput: N events in batches of B per request, C requests in flight;
   events/s accepted (every 2xx means the batch is durable in Kafka);
2. latency: a steady R events/s in batches of B; p50/p99/max request latency.

Usage: python bench/ingest_webhooks.py [--events N] [--batch B] [--concurrency C]
       [--rate R] [--seconds S] [--workers W]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from bench.common import bench_broker, percentile, write_results
from tests.support.services import DEMO_TOKEN, Stack

HEADERS = {"Authorization": f"Bearer {DEMO_TOKEN}", "Content-Type": "application/json"}


def batch_body(start: int, size: int) -> bytes:
    now = datetime.now(UTC).isoformat()
    return json.dumps(
        [
            {
                "id": f"b{i}",
                "updated_at": now,
                "email": f"contact{i}@example.com",
                "first_name": "Ada",
                "last_name": "Lovelace",
                "phone": "+44 20 7946 0958",
                "company": {"name": "Analytical Engines Ltd", "size": 42},
                "tags": ["vip", "newsletter"],
            }
            for i in range(start, start + size)
        ]
    ).encode()


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    started = time.perf_counter()
    async with session.post(url, data=body, headers=HEADERS) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"ingest answered {response.status}")
    return time.perf_counter() - started


async def throughput(url: str, *, events: int, batch: int, concurrency: int) -> dict[str, float]:
    bodies = [batch_body(i, batch) for i in range(0, events, batch)]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await post(session, url, batch_body(0, batch))  # warm up the connection

        async def worker() -> None:
            while not queue.empty():
                await post(session, url, queue.get_nowait())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "events": events,
        "batch": batch,
        "concurrency": concurrency,
        "events_per_s": round(events / elapsed),
    }


async def latency(url: str, *, rate: float, batch: int, seconds: float) -> dict[str, float]:
    requests = int(rate * seconds / batch)
    interval = batch / rate
    bodies = [batch_body(i * batch, batch) for i in range(requests)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        await post(session, url, bodies[0])
        begin = time.perf_counter()
        tasks = []
        for index, body in enumerate(bodies):
            delay = begin + index * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(session, url, body)))
        latencies = sorted(await asyncio.gather(*tasks))
    return {
        "events_per_s": rate,
        "batch": batch,
        "requests": requests,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2, help="ingest worker processes")
    args = parser.parse_args()
    with bench_broker() as bootstrap, tempfile.TemporaryDirectory() as workdir:
        stack = Stack(bootstrap=bootstrap, workdir=Path(workdir))
        stack.config["services"]["ingest"]["delivery_timeout_ms"] = 30_000
        stack.config["services"]["ingest"]["workers"] = args.workers
        stack.write_config()
        try:
            stack.start("ingest")
            url = f"{stack['ingest'].url}/webhooks/demo"
            # Warm up the broker's JIT and the connections first: the figures are for
            # a running system, not the first seconds of a new JVM.
            asyncio.run(throughput(url, events=args.events // 3, batch=args.batch, concurrency=4))
            figures = {
                "ingest_workers": args.workers,
                "throughput": asyncio.run(
                    throughput(
                        url, events=args.events, batch=args.batch, concurrency=args.concurrency
                    )
                ),
                "latency": asyncio.run(
                    latency(url, rate=args.rate, batch=args.batch, seconds=args.seconds)
                ),
            }
        finally:
            stack.stop()
    write_results("ingest_webhooks", figures)


if __name__ == "__main__":
    main()
