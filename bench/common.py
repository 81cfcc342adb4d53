"""What the benchmarks share: a broker to run against, and the results file format."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.kafka import LocalKafka  # noqa: E402

BENCH_KAFKA_PORT = 19600  # below the ephemeral port range


@contextmanager
def bench_broker() -> Iterator[str]:
    """CRMSYNC_BENCH_BOOTSTRAP's cluster, else a fresh local broker purged afterwards."""
    existing = os.environ.get("CRMSYNC_BENCH_BOOTSTRAP")
    if existing:
        yield existing
        return
    kafka = LocalKafka(name="bench", port=BENCH_KAFKA_PORT)
    bootstrap = kafka.start()
    try:
        yield bootstrap
    finally:
        kafka.stop(purge=True)


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def write_results(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    result = {
        "benchmark": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores {platform.machine()}, "
        f"Python {platform.python_version()}",
        "command": " ".join(["python", "-m", f"bench.{name}", *sys.argv[1:]]),
        **figures,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


def produce_all(bootstrap: str, topic: str, messages: Iterable[tuple[bytes, bytes]]) -> None:
    """Put (key, value) messages on ``topic`` as fast as the broker takes them."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
        }
    )
    for index, (key, value) in enumerate(messages):
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if index % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
