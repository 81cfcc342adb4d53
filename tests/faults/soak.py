"""The fault suite's checks for as long as asked, with random kill times.

Round after round, a fresh stack (mapper and writer on the SQLite store) takes a
steady load while a random fault strikes at a random moment: the mapper or the
writer killed with SIGKILL (at a random crash point, or from outside), or the broker
killed and restarted. Supervisors restart a process that exits, as an orchestrator
would. Each round ends with the model's checks (every acknowledged change's newest
version in the store, nothing emitted twice, no version going back, no event
audited twice) and prints its line; the run stops at the first round that fails.

Not part of `make test`: `make soak` runs it (SOAK_MINUTES, default 30).
Usage: python -m tests.faults.soak [--minutes M] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from services.mapper.engine import CRASH_POINTS as MAPPER_CRASH_POINTS
from services.writer.loop import CRASH_POINTS as WRITER_CRASH_POINTS
from tests.faults.model import Load, Outcome, audited_twice, check_store
from tests.faults.running import SteadyLoad, Supervisor
from tests.support.kafka import LocalKafka
from tests.support.services import Stack, kill_leftovers

SOAK_PORT = 19740  # below the ephemeral port range, apart from the suite's brokers
RECOVERY_BOUND_S = 180


def one_round(cluster: LocalKafka, workdir: Path, rng: random.Random) -> tuple[str, Outcome]:
    stack = Stack(bootstrap=cluster.bootstrap, workdir=workdir)
    fault, strike = pick_fault(stack, cluster, rng)
    supervisors: list[Supervisor] = []
    try:
        stack.start("mapper", "writer")
        supervisors = [Supervisor(stack[name]).start() for name in ("mapper", "writer")]
        load = Load(cluster.bootstrap, stack.prefix)
        steady = SteadyLoad(
            load, records=rng.randint(50, 400), rounds=rng.randint(5, 20), pause_s=0.2
        )
        steady.start()
        time.sleep(rng.uniform(0.2, 4.0))
        strike()
        started = time.monotonic()
        steady.finish(600)
        outcome = check_store(load, stack.db_path, since=started, timeout_s=RECOVERY_BOUND_S)
        twice = audited_twice(cluster.bootstrap, stack.prefix)
        if twice:
            outcome.duplicated.extend(twice)
        return fault, outcome
    finally:
        for supervisor in supervisors:
            supervisor.stop()
        stack.stop()


def pick_fault(
    stack: Stack, cluster: LocalKafka, rng: random.Random
) -> tuple[str, Callable[[], None]]:
    """A random fault and how to strike it (a crash point is armed before start)."""
    kind = rng.choice(["mapper-crash-point", "writer-crash-point", "kill", "broker"])
    if kind == "mapper-crash-point":
        # A round has no full sync, so nothing to release: mid-release never fires.
        batch_points = [p for p in MAPPER_CRASH_POINTS if p != "mapper-mid-release"]
        point = f"{rng.choice(batch_points)}:{rng.randint(1, 6)}"
        stack["mapper"].env["CRMSYNC_CRASH_AT"] = point
        return f"mapper at {point}", lambda: None
    if kind == "writer-crash-point":
        point = f"{rng.choice(WRITER_CRASH_POINTS)}:{rng.randint(1, 6)}"
        stack["writer"].env["CRMSYNC_CRASH_AT"] = point
        return f"writer at {point}", lambda: None
    if kind == "kill":
        name = rng.choice(["mapper", "writer"])
        return f"{name} killed from outside", stack[name].kill
    down_s = rng.uniform(0.5, 5.0)

    def broker() -> None:
        cluster.kill_node(1)
        time.sleep(down_s)
        cluster.start_node(1)

    return f"broker killed for {down_s:.1f}s", broker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    print(f"soak: {args.minutes} minutes, seed {seed}", flush=True)
    cluster = LocalKafka(name="soak", port=SOAK_PORT)
    cluster.start()
    root = Path(tempfile.mkdtemp(prefix="crmsync-soak-"))
    deadline = time.monotonic() + args.minutes * 60
    rounds = 0
    try:
        while time.monotonic() < deadline:
            rounds += 1
            fault, outcome = one_round(cluster, root / f"round-{rounds}", rng)
            print(outcome.line(f"round {rounds}, {fault}"), flush=True)
            if outcome.lost or outcome.duplicated or outcome.regressions:
                print(f"soak: round {rounds} failed (seed {seed})", flush=True)
                return 1
        print(f"soak: {rounds} rounds passed (seed {seed})", flush=True)
        return 0
    finally:
        kill_leftovers()
        cluster.stop(purge=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
