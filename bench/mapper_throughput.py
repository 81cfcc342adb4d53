"""Mapper benchmark: one mapper worker, a million records in its state.

Starts its own Kafka broker (unless CRMSYNC_BENCH_BOOTSTRAP names one) and one mapper
process on a fresh topic prefix, then:

1. fill: RECORDS distinct records are put on the changes topic and mapped (each a
   new record: state written, update emitted);
2. update: with the mapper stopped, UPDATES changes to existing records (a changed
   name and score each, so every one is mapped, compared with its state and emitted)
   are put on the topic; the mapper is started again and timed from its first
   consumed change until its committed offsets reach the end. The mapper's resident
   memory is sampled throughout;
3. recovery: the mapper is stopped, its local state deleted, and started again; the
   time until it is ready (the whole state restored from the changelog) is reported,
   and the time until it is ready with its local state intact.

Figures are printed and written to bench/results/mapper_throughput.json.
Usage: python -m bench.mapper_throughput [--records N] [--updates M] [--partitions P]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from bench.common import bench_broker, produce_all, write_results
from services.core.codecs import load_contracts
from services.core.contracts import ContactChange, Operation, Origin
from tests.support.services import Stack

CONTRACTS = load_contracts()
SOURCE: dict[str, Any] = {
    "kind": "generic_webhook",
    "auth": {"kind": "bearer", "token": {"env": "CRMSYNC_DEMO_TOKEN"}},
    "mapping": {
        "email": "email",
        "firstname": "first_name",
        "lastname": "last_name",
        "city": "city",
        "customer_type": {"attribute": "customer_type", "values": {"A": "key account", "B": "smb"}},
        "score": {"attribute": "score", "type": "number"},
    },
}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def change(index: int, version: int) -> bytes:
    return CONTRACTS.contact_change.encode(
        ContactChange(
            source="bench",
            record_id=str(index),
            operation=Operation.UPSERT,
            event_id=uuid.uuid4().hex,
            source_modified_at=T0 + timedelta(seconds=version),
            received_at=T0,
            fields={
                "email": f"person{index}@example.com",
                "firstname": f"First{index}v{version}",
                "lastname": f"Last{index}",
                "city": "Copenhagen",
                "customer_type": "A" if index % 2 else "B",
                "score": index % 100 + version,
            },
            origin=Origin.WEBHOOK,
        )
    )


def produce(bootstrap: str, topic: str, indexes: range, version: int) -> None:
    messages = ((f"bench:{index}".encode(), change(index, version)) for index in indexes)
    produce_all(bootstrap, topic, messages)


def lag(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = consumer.committed(tps, timeout=10)
        total = 0
        for tp in committed:
            high = consumer.get_watermark_offsets(tp, timeout=10)[1]
            total += high - max(tp.offset, 0)
        return total
    finally:
        consumer.close()


def wait_caught_up(bootstrap: str, group: str, topic: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if lag(bootstrap, group, topic) == 0:
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(f"mapper did not catch up within {timeout_s}s")


class RssSampler:
    """Peak resident memory of a process, sampled from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def timed_start(stack: Stack) -> float:
    started = time.monotonic()
    stack.start("mapper")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--updates", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()

    with bench_broker() as bootstrap, tempfile.TemporaryDirectory() as workdir:
        stack = Stack(bootstrap=bootstrap, workdir=Path(workdir), sources={"bench": SOURCE})
        for role in ("changes", "fullsync", "profile_updates"):
            stack.config["kafka"]["topics"][role] = {"partitions": args.partitions}
        stack.write_config()
        topic, group = stack.topic("changes"), stack.topic("mapper")
        mapper = stack["mapper"]

        stack.start("mapper")
        fill_started = time.monotonic()
        produce(bootstrap, topic, range(args.records), version=1)
        filled = wait_caught_up(bootstrap, group, topic, timeout_s=1800)
        fill_rate = args.records / (filled - fill_started)
        print(f"fill: {args.records} new records at {fill_rate:,.0f}/s")
        mapper.stop()

        produce(bootstrap, topic, range(args.updates), version=2)
        stack.start("mapper")
        assert mapper.process is not None
        sampler = RssSampler(mapper.process.pid)
        ready = time.monotonic()
        done = wait_caught_up(bootstrap, group, topic, timeout_s=1800)
        peak_rss_mib = sampler.stop() / 1024
        update_rate = args.updates / (done - ready)
        print(
            f"update: {args.updates} changes at {update_rate:,.0f}/s, "
            f"peak RSS {peak_rss_mib:.0f} MiB"
        )
        mapper.stop()

        warm_start_s = timed_start(stack)
        mapper.stop()
        shutil.rmtree(Path(workdir) / "mapper" / "state")
        cold_start_s = timed_start(stack)
        assert mapper.process is not None
        restored_rss_mib = RssSampler(mapper.process.pid).stop() / 1024
        mapper.stop()

        write_results(
            "mapper_throughput",
            {
                "records_in_state": args.records,
                "partitions": args.partitions,
                "fill_records_per_s": round(fill_rate),
                "update_changes": args.updates,
                "update_changes_per_s": round(update_rate),
                "peak_rss_mib_during_updates": round(peak_rss_mib),
                "rss_mib_after_restore": round(restored_rss_mib),
                "restart_ready_s_with_local_state": round(warm_start_s, 1),
                "restart_ready_s_restoring_whole_state": round(cold_start_s, 1),
            },
        )


if __name__ == "__main__":
    main()
