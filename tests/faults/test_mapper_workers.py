"""One mapper service of two workers (``services.mapper.workers: 2``): each worker is a
member of the mapper's group with its own identity, partitions and state; worker 0
restarts a worker killed with SIGKILL, and the load is still mapped exactly once; a
worker whose worker 0 is gone stops by itself."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.faults.model import Load, audited_twice, check_updates, emitted_updates, wait_until
from tests.faults.running import (
    SteadyLoad,
    freeze_mid_transaction,
    mapper_members,
    transaction_held,
)
from tests.support.services import ServiceProcess, Stack, child_pids, http_get, pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RECORDS = 300
PAUSE_S = 0.2
# Rounds at most: the load is stopped 10 rounds after the killed worker is back.
ROUNDS = 1000
# Worker 1 paused this long has a backlog of about a full batch; mapped at once, it is a
# transaction long enough to freeze inside, at one of these moments after it wakes.
BACKLOG_S = 5.0
WAKES_S = (0.06, 0.09, 0.12, 0.15, 0.18, 0.21, 0.24)
INSTANCE = "mx"
WORKERS = ("mx-w0", "mx-w1")
ALL = {0, 1, 2}  # the stack's partitions of changes and fullsync
# The most updates a batch holds (batch_max_records): a worker killed after its commit
# and before it counted the batch leaves them out of the metrics.
BATCH = 2000


def two_workers(stack: Stack) -> ServiceProcess:
    stack.config["services"]["mapper"].update(workers=2, instance_id=INSTANCE)
    stack.write_config()
    stack.start("mapper")  # ready only once both workers have partitions and state
    return stack["mapper"]


def split(stack: Stack) -> bool:
    """The group is stable with both workers, each with some of the partitions."""
    now = mapper_members(stack)
    if now is None or set(now) != set(WORKERS):
        return False
    first, second = now["mx-w0"], now["mx-w1"]
    return bool(first) and bool(second) and first | second == ALL and not first & second


def the_worker(mapper: ServiceProcess, *, other_than: int | None = None) -> int:
    """The pid of worker 1 (worker 0's only child), once it runs (and is not
    ``other_than``, a former one)."""
    assert mapper.process is not None
    found: set[int] = set()

    def one() -> bool:
        nonlocal found
        found = child_pids(mapper.process.pid) if mapper.process is not None else set()
        return len(found) == 1 and other_than not in found

    wait_until(one, timeout_s=30, what="worker 1 running")
    return found.pop()


def healthz_fails_for_worker_1(mapper: ServiceProcess, *, within_s: float) -> str | None:
    """What /healthz said about worker 1 when it first failed (None: it never did)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        status, body = http_get(f"{mapper.url}/healthz")
        if status == 503 and b"worker-1" in body:
            return body.decode()
        time.sleep(0.05)
    return None


def updates_counted(mapper: ServiceProcess) -> float:
    """crmsync_profile_updates_total on worker 0's /metrics (every worker's sum)."""
    _status, body = http_get(f"{mapper.url}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith("crmsync_profile_updates_total{")
    )


def rounds_acked(load: Load, rounds: float) -> bool:
    return len(load.acked) >= rounds * RECORDS


@pytest.mark.timeout(300)
def test_two_workers_split_the_partitions_and_a_killed_one_is_restarted(
    stack: Stack, kafka_bootstrap: str
) -> None:
    mapper = two_workers(stack)
    shared_in = wait_until(lambda: split(stack), timeout_s=60, what="both workers in the group")
    halves = mapper_members(stack)
    data_dir = stack.workdir / "mapper"
    assert {p.name for p in data_dir.iterdir()} == {"w0", "w1"}
    assert all((data_dir / w / "state").is_dir() for w in ("w0", "w1"))
    worker = the_worker(mapper)

    load = Load(kafka_bootstrap, stack.prefix)
    steady = SteadyLoad(load, records=RECORDS, rounds=ROUNDS, pause_s=PAUSE_S).start()
    try:
        wait_until(lambda: rounds_acked(load, 5), timeout_s=60, what="5 rounds acked")
        # Killed inside a transaction: outputs on the broker, not yet committed.
        # (Its updates are on the broker while it maps; its changelog only at the end.)
        tries = freeze_mid_transaction(
            worker,
            lambda: transaction_held(stack, "profile-updates"),
            backlog_s=BACKLOG_S,
            wakes_s=WAKES_S,
        )
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()
        # Worker 0's /healthz says so until the worker runs again ...
        said = healthz_fails_for_worker_1(mapper, within_s=5)
        # ... and restarts it: the same member, back with its own partitions.
        restarted = the_worker(mapper, other_than=worker)
        mapper.wait_ready()
        wait_until(lambda: split(stack), timeout_s=60, what="worker 1 back")
        back_s = time.monotonic() - killed
        assert mapper_members(stack) == halves
        # The load goes on with both workers a while.
        back_round = len(load.acked) / RECORDS
        wait_until(lambda: rounds_acked(load, back_round + 10), timeout_s=60, what="10 rounds")
    finally:
        steady.stop()
    print(
        f"[fault] two workers: split {halves} in {shared_in:.1f}s; worker 1 killed inside a "
        f"transaction (try {tries}), back in {back_s:.1f}s at round {back_round:.0f} of "
        f"{len(load.acked) / RECORDS:.0f}; /healthz meanwhile: {said}"
    )
    # Back long before the broker would have aborted the open transaction by its timeout
    # (60 s; the restore waits for it): the restarted worker, with the same transactional
    # id, fenced its former self and aborted it at once.
    assert back_s < 30, back_s
    assert said is not None and "not running (exited with -9)" in said, said
    outcome = check_updates(load, since=killed)
    outcome.assert_exact("mapper worker 1 of 2 killed -9, restarted by worker 0")
    assert audited_twice(kafka_bootstrap, stack.prefix) == []
    log = mapper.log_path.read_text(errors="replace")
    assert re.search(r"worker exited worker=1 code=-9 .*restarting", log), mapper.log_tail()
    # Each line names its worker; both mapped.
    assert re.search(r"mapper w0 INFO .*assigned partitions", log)
    assert re.search(r"mapper w1 INFO .*assigned partitions", log)
    # Worker 0's /metrics add up every worker's (a kill may lose one batch's count).
    emitted = len(emitted_updates(kafka_bootstrap, stack.prefix))
    assert emitted - BATCH <= updates_counted(mapper) <= emitted
    assert http_get(f"{mapper.url}/healthz")[0] == 200

    # SIGTERM stops both, each after the transaction in hand.
    assert mapper.stop() == 0, mapper.log_tail()
    wait_until(lambda: not pid_alive(restarted), timeout_s=30, what="worker 1 stopped")


@pytest.mark.timeout(300)
def test_a_worker_stops_when_worker_0_is_gone_and_comes_back_with_it(stack: Stack) -> None:
    mapper = two_workers(stack)
    wait_until(lambda: split(stack), timeout_s=60, what="both workers in the group")
    halves = mapper_members(stack)
    worker = the_worker(mapper)
    mapper.kill()  # SIGKILL: worker 0 cannot pass anything on
    wait_until(lambda: not pid_alive(worker), timeout_s=30, what="worker 1 stopped itself")
    assert "parent worker gone; stopping" in mapper.log_path.read_text(errors="replace")
    # Started again, both take their own partitions back (static membership).
    mapper.start()
    mapper.wait_ready()
    wait_until(lambda: split(stack), timeout_s=60, what="both workers back")
    assert mapper_members(stack) == halves
