"""Stream engines side by side: one stateful, exactly-once consume-transform-produce
workload through Quix Streams, faust-streaming and a minimal loop built the way
crmsync's mapper engine is built (confluent-kafka transactions, one RocksDB per input
partition, a compacted changelog written inside the transaction, RocksDB written after
the commit).

The workload, the same for every engine: read a message (key, small JSON value),
read the key's state, update it (a count and the last value seen), write it back, and
produce one JSON output message. Exactly-once in every engine; one transaction per
2,000 input messages (the mapper's default batch), or per second when input is slow.

Each engine runs in its own process, one after the other, on a fresh topic set of
the same broker. The driver reports, per engine, messages per second of wall time
and per CPU-second of the engine's process (all its threads: "per core"), measured
from the engine's first committed transaction until its committed offsets reach the
end of the input; its peak resident memory (VmHWM); and how many output messages a
read_committed reader sees (it must equal the input count).

The libraries are not crmsync dependencies. Install them into throwaway
virtualenvs outside the repository (QUIX_VENV and FAUST_VENV name two empty folders
of your choice) and point the driver at their interpreters:

    python3.11 -m venv "$QUIX_VENV"
    "$QUIX_VENV/bin/pip" install quixstreams==3.28.1
    python3.11 -m venv "$FAUST_VENV"
    "$FAUST_VENV/bin/pip" install "faust-streaming[rocksdict]==0.15.3" "aiokafka[lz4]==0.14.0"

    python -m bench.stream_engines --quix-python "$QUIX_VENV/bin/python" \\
        --faust-python "$FAUST_VENV/bin/python"

(The input is lz4-compressed, which aiokafka reads only with its lz4 extra.)

An engine whose interpreter is not given, or cannot import its library, is skipped
with a message. The minimal loop runs on this interpreter (crmsync's own
confluent-kafka and rocksdict). The broker is CRMSYNC_BENCH_BOOTSTRAP's, else a
fresh local one. Not part of `make bench`: figures are printed, and written to
bench/results/stream_engines.json only with --write.

Usage: python -m bench.stream_engines [--messages N] [--faust-messages N] [--keys K]
       [--partitions P] [--engines own,quix,faust] [--quix-python PY]
       [--faust-python PY] [--kill-after S] [--logs DIR] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BATCH = 2_000
ENGINES = ("own", "quix", "faust")
LIBRARY = {"quix": "quixstreams", "faust": "faust"}


# --- workers: each runs in the engine's own interpreter, so stdlib imports only above


def _value(state: dict[str, Any] | None, message: dict[str, Any]) -> dict[str, Any]:
    """The transform every engine runs: per-key count and last value seen."""
    count = (state or {}).get("count", 0) + 1
    return {"count": count, "last": message["n"], "email": message["email"]}


def _output(value: dict[str, Any]) -> dict[str, Any]:
    """The output message: which input it answers (to count duplicates) and the count."""
    return {"n": value["last"], "count": value["count"]}


def _own_clients(args: argparse.Namespace) -> tuple[Any, Any]:
    """The mapper's consumer and transactional producer settings."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "group.instance.id": f"{args.group}-0",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            "queued.max.messages.kbytes": 8 * 1024,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "transactional.id": f"{args.group}-0",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "transaction.timeout.ms": 60_000,
            # Quix Streams' partitioner: outputs spread over the output partitions
            # (with the input's partitioner each batch would write one partition).
            "partitioner": "murmur2_random",
        }
    )
    return consumer, producer


def _own_rocksdb(path: Path, cache: Any) -> Any:
    """The mapper's RocksDB options (services/mapper/state.py): one shared block cache,
    small write buffers, bloom filters."""
    from rocksdict import BlockBasedOptions, Options, Rdict

    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(8 * 1024 * 1024)
    options.set_max_write_buffer_number(2)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_bloom_filter(10, False)
    options.set_block_based_table_factory(table)
    return Rdict(str(path), options=options)


def worker_own(args: argparse.Namespace) -> None:
    """The mapper engine's skeleton: consume a batch, map it with staged state, produce
    outputs and changelog writes, commit outputs + changelog + offsets in one
    transaction, then write RocksDB."""
    import orjson
    from confluent_kafka import TopicPartition
    from rocksdict import Cache, WriteBatch

    stop = _stop_flag()
    consumer, producer = _own_clients(args)
    producer.init_transactions(60)
    dbs: dict[int, Any] = {}
    cache = Cache(32 * 1024 * 1024)
    changelog_offsets: dict[int, int] = {}

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            raise RuntimeError(error)
        partition = message.partition()
        changelog_offsets[partition] = max(changelog_offsets.get(partition, -1), message.offset())

    def on_assign(_consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            if tp.partition not in dbs:
                dbs[tp.partition] = _own_rocksdb(Path(args.state_dir) / str(tp.partition), cache)

    consumer.subscribe([args.input], on_assign=on_assign)
    while not stop():
        messages = [m for m in consumer.consume(BATCH, 1.0) if not m.error()]
        if not messages:
            continue
        staged: dict[int, dict[bytes, bytes]] = {}
        positions: dict[tuple[str, int], int] = {}
        producer.begin_transaction()
        for message in messages:
            key, partition = message.key(), message.partition()
            positions[(message.topic(), partition)] = message.offset() + 1
            writes = staged.setdefault(partition, {})
            raw = writes.get(key)
            if raw is None:
                raw = dbs[partition].get(key)
            value = _value(orjson.loads(raw) if raw else None, orjson.loads(message.value()))
            encoded = orjson.dumps(value)
            writes[key] = encoded
            producer.produce(
                args.changelog, key=key, value=encoded, partition=partition, on_delivery=delivered
            )
            producer.produce(args.output, key=key, value=orjson.dumps(_output(value)))
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata())
        producer.flush()
        producer.commit_transaction()
        for partition, writes in staged.items():
            batch = WriteBatch(raw_mode=True)
            for key, encoded in writes.items():
                batch.put(key, encoded)
            batch.put(b"\xffchangelog-offset", str(changelog_offsets[partition]).encode())
            dbs[partition].write(batch)
    consumer.close()
    for db in dbs.values():
        db.close()


def worker_quix(args: argparse.Namespace) -> None:
    from quixstreams import Application  # type: ignore[import-not-found]

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_every=BATCH,
        commit_interval=1.0,
        state_dir=args.state_dir,
        loglevel="WARNING",
    )
    source = app.topic(args.input, key_deserializer="bytes", value_deserializer="json")
    sink = app.topic(args.output, key_serializer="bytes", value_serializer="json")

    def step(message: dict[str, Any], state: Any) -> dict[str, Any]:
        value = _value(state.get("s"), message)
        state.set("s", value)
        return _output(value)

    app.dataframe(source).apply(step, stateful=True).to_topic(sink)
    app.run()


def worker_faust(args: argparse.Namespace) -> None:
    import faust  # type: ignore[import-not-found]
    from faust.types import ProcessingGuarantee  # type: ignore[import-not-found]

    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        store="rocksdb://",
        datadir=args.state_dir,
        processing_guarantee=ProcessingGuarantee.EXACTLY_ONCE,
        broker_commit_every=BATCH,
        broker_commit_interval=1.0,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
    )
    source = app.topic(args.input, key_type=bytes, value_type=bytes, value_serializer="raw")
    sink = app.topic(args.output, key_type=bytes, value_type=bytes, value_serializer="raw")
    table = app.Table(
        "state",
        partitions=args.partitions,
        key_type=bytes,
        value_type=bytes,
    )

    @app.agent(source)  # type: ignore[untyped-decorator]
    async def step(stream: Any) -> None:
        async for key, raw in stream.items():
            old = table.get(key)
            value = _value(json.loads(old) if old else None, json.loads(raw))
            table[key] = json.dumps(value).encode()
            await sink.send(key=key, value=json.dumps(_output(value)).encode())

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()


def _stop_flag() -> Any:
    stopped: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopped.append(True))
    return lambda: bool(stopped)


# --- the driver --------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, all threads) and peak RSS in KiB of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1])
    return ticks / os.sysconf("SC_CLK_TCK"), peak


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
    except KafkaException:
        return 0  # the group's coordinator is not known yet
    finally:
        consumer.close()


def _count_committed_output(
    bootstrap: str, topic: str, partitions: int, expected: int
) -> tuple[int, int]:
    """Output messages a read_committed reader sees, and how many inputs they answer."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"count-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        count, answered, at_end = 0, set[int](), set[int]()
        # A transaction left open by a killed producer hides what follows it from
        # read_committed readers until the broker aborts it (transaction.timeout.ms):
        # wait that long for the missing answers before counting them missing.
        last_news = time.monotonic()
        while len(at_end) < partitions or len(answered) < expected:
            if time.monotonic() - last_news > 75:
                break
            for message in consumer.consume(10_000, 1.0):
                error = message.error()
                if error is None:
                    count += 1
                    answered.add(json.loads(message.value() or b"{}")["n"])
                    at_end.discard(message.partition())
                    last_news = time.monotonic()
                elif error.code() == error._PARTITION_EOF:
                    at_end.add(message.partition() or 0)
        return count, len(answered)
    finally:
        consumer.close()


def _create_topics(bootstrap: str, topics: dict[str, dict[str, str]], partitions: int) -> None:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, partitions, 1, config=config) for name, config in topics.items()]
    )
    for future in futures.values():
        future.result(30)


def _library_present(python: str, engine: str) -> str | None:
    """None when ``python`` imports the engine's library, else why not."""
    if engine == "own":
        return None
    if not python:
        return f"no interpreter given (--{engine}-python)"
    probe = subprocess.run(
        [python, "-c", f"import {LIBRARY[engine]}"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"{python} cannot import {LIBRARY[engine]}: {probe.stderr.strip()[-200:]}"
    return None


def _version(python: str, engine: str) -> str:
    names = {"own": "confluent-kafka rocksdict", "quix": "quixstreams", "faust": "faust-streaming"}
    code = (
        "import importlib.metadata as m, sys; "
        "print(' '.join(n + ' ' + m.version(n) for n in sys.argv[1:]))"
    )
    result = subprocess.run(
        [python, "-c", code, *names[engine].split()], capture_output=True, text=True, check=False
    )
    return result.stdout.strip()


def _prepare(bootstrap: str, engine: str, args: argparse.Namespace, total: int) -> dict[str, str]:
    """Fresh input, output and changelog topics; ``total`` input messages."""
    from bench.common import produce_all

    prefix = f"enginebench-{uuid.uuid4().hex[:8]}-{engine}"
    names = {role: f"{prefix}-{role}" for role in ("in", "out", "changelog", "group")}
    _create_topics(
        bootstrap,
        {
            names["in"]: {},
            names["out"]: {},
            names["changelog"]: {"cleanup.policy": "compact"},
        },
        args.partitions,
    )
    messages = (
        (
            f"k{(index * 7919) % args.keys}".encode(),
            json.dumps(
                {"n": index, "email": f"person{index}@example.com", "city": "Copenhagen"}
            ).encode(),
        )
        for index in range(total)
    )
    produce_all(bootstrap, names["in"], messages)
    return names


def _measure(
    command: list[str], log: Any, *, workdir: Path, args: argparse.Namespace, total: int
) -> dict[str, Any]:
    """Run the worker until its committed offsets reach ``total``; its rates, memory
    and (with --kill-after) where it was killed."""
    bootstrap, group, topic = command[6], command[8], command[10]
    result: dict[str, Any] = {}
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    first: tuple[float, float, int] | None = None
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with {process.returncode}")
            if time.monotonic() - started > args.timeout:
                raise TimeoutError(f"not finished within {args.timeout}s")
            done = _committed(bootstrap, group, topic, args.partitions)
            now = time.monotonic()
            cpu, peak = _proc_stat(process.pid)
            if first is None and done > 0:
                first = (now, cpu, done)
            killing = args.kill_after and "killed_after_committed" not in result
            if killing and first and now - first[0] >= args.kill_after:
                # kill -9 mid-batch, then the same instance again: the figures that
                # count are the duplicates and missing outputs, not the rates.
                process.kill()
                process.wait()
                result["killed_after_committed"] = done
                process = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir
                )
                first = None
                continue
            if done >= total and first is not None:
                t0, cpu0, done0 = first
                wall = max(now - t0, 1e-9)
                result.update(
                    {
                        "messages_timed": total - done0,
                        "messages_per_s": round((total - done0) / wall),
                        "messages_per_cpu_s": round((total - done0) / max(cpu - cpu0, 1e-9)),
                        "cpu_cores_busy": round((cpu - cpu0) / wall, 2),
                        "peak_rss_mib": round(peak / 1024),
                        "start_to_first_commit_s": round(t0 - started, 1),
                    }
                )
                return result
            time.sleep(0.2)
    except (RuntimeError, TimeoutError) as exc:
        result["error"] = str(exc)
        return result
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_engine(
    engine: str, python: str, bootstrap: str, args: argparse.Namespace, *, workdir: Path, total: int
) -> dict[str, Any]:
    names = _prepare(bootstrap, engine, args, total)
    command = [
        python,
        str(Path(__file__).resolve()),
        "worker",
        "--engine",
        engine,
        "--bootstrap",
        bootstrap,
        "--group",
        names["group"],
        "--input",
        names["in"],
        "--output",
        names["out"],
        "--changelog",
        names["changelog"],
        "--partitions",
        str(args.partitions),
        "--state-dir",
        str(workdir / f"{engine}-state"),
    ]
    result: dict[str, Any] = {
        "engine": engine,
        "versions": _version(python, engine),
        "messages": total,
    }
    with (workdir / f"{engine}.log").open("w") as log:
        result.update(_measure(command, log, workdir=workdir, args=args, total=total))
    text = (workdir / f"{engine}.log").read_text()
    result["log_warnings_and_errors"] = sum(
        1 for line in text.splitlines() if any(w in line for w in ("WARN", "ERROR", "CRIT"))
    )
    if "error" in result:
        result["log_tail"] = text[-1500:]
    else:
        outputs, answered = _count_committed_output(bootstrap, names["out"], args.partitions, total)
        result["outputs_read_committed"] = outputs
        result["duplicates"] = outputs - answered
        result["missing"] = total - answered
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
        (Path(args.logs) / f"{engine}.log").write_text(text)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker")
    worker.add_argument("--engine", choices=ENGINES, required=True)
    for name in ("bootstrap", "group", "input", "output", "changelog", "state-dir"):
        worker.add_argument(f"--{name}", required=True)
    worker.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument(
        "--faust-messages",
        type=int,
        default=40_000,
        help="input for faust-streaming, an order of magnitude slower (0: --messages)",
    )
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--quix-python", default=os.environ.get("ENGINEBENCH_QUIX_PYTHON", ""))
    parser.add_argument("--faust-python", default=os.environ.get("ENGINEBENCH_FAUST_PYTHON", ""))
    parser.add_argument("--own-python", default=sys.executable)
    parser.add_argument("--timeout", type=float, default=110.0, help="seconds per engine")
    parser.add_argument("--write", action="store_true", help="write bench/results/")
    parser.add_argument("--logs", default="", help="keep each engine's log in this folder")
    parser.add_argument(
        "--kill-after",
        type=float,
        default=0.0,
        help="kill -9 each engine this many seconds after its first commit, restart it, "
        "and count duplicate and missing outputs",
    )
    args = parser.parse_args()

    if args.command == "worker":
        {"own": worker_own, "quix": worker_quix, "faust": worker_faust}[args.engine](args)
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.common import bench_broker, write_results

    pythons = {"own": args.own_python, "quix": args.quix_python, "faust": args.faust_python}
    results = []
    with bench_broker() as bootstrap, tempfile.TemporaryDirectory() as workdir:
        for engine in args.engines.split(","):
            missing = _library_present(pythons[engine], engine)
            if missing is not None:
                print(f"skipping {engine}: {missing}", file=sys.stderr)
                results.append({"engine": engine, "skipped": missing})
                continue
            print(f"== {engine}", file=sys.stderr)
            count = args.faust_messages if engine == "faust" and args.faust_messages else None
            result = run_engine(
                engine,
                pythons[engine],
                bootstrap,
                args,
                workdir=Path(workdir),
                total=count or args.messages,
            )
            print(json.dumps(result), file=sys.stderr)
            results.append(result)
    figures = {
        "keys": args.keys,
        "partitions": args.partitions,
        "transaction_every": BATCH,
        "engines": results,
    }
    if args.write:
        write_results("stream_engines", figures)
    else:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
