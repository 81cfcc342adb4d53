"""Two mapper instances in one group, under a running load: partitions move between
them (a rebalance, a stopped instance) with their state restored from the changelog,
and an instance frozen past its session (a zombie) is fenced when it wakes. Either
way every acked change's newest version is emitted, once, in version order."""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.crash_points import FREEZE_ENV
from tests.faults.model import (
    CONTRACTS,
    Load,
    audited_twice,
    check_updates,
    read_committed,
    wait_until,
)
from tests.faults.running import SteadyLoad, mapper_instance, mapper_members, transaction_held
from tests.support.services import ServiceProcess, Stack

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RECORDS = 300
# Rounds of the load, RECORDS changes each (~0.6 s a round): they outlast the moves.
ROUNDS = 140
PAUSE_S = 0.5
# A's transaction that freezes (a few rounds into the load): after it produced its
# updates and changelog, before it sent its offsets (services/core/crash_points.py).
FREEZE_AT = "mapper-after-produce:20"
ALL = {0, 1, 2}  # the stack's partitions of changes and fullsync
ASSIGNED = re.compile(r"assigned partitions \[([\d, ]*)\]")
RESTORED = re.compile(r"restored state records from the changelog: (\{.*\})")


@contextlib.contextmanager
def mappers(stack: Stack) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """Mappers A and B of the stack, not started; both stopped at the end (woken
    first, in case one is still frozen)."""
    a, b = mapper_instance(stack, "mapper-a"), mapper_instance(stack, "mapper-b")
    try:
        yield a, b
    finally:
        for mapper in (a, b):
            mapper.signal(signal.SIGCONT)
            with contextlib.suppress(RuntimeError):
                mapper.stop(timeout_s=30)


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (by a signal: SIGSTOP)."""
    with contextlib.suppress(FileNotFoundError):
        # The state follows the command's name, which is in parentheses.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    return False


def shared(now: dict[str, set[int]] | None) -> bool:
    """A and B share every partition, each with some."""
    if now is None:
        return False
    a, b = now.get("mapper-a", set()), now.get("mapper-b", set())
    return len(now) == 2 and bool(a) and bool(b) and a | b == ALL and not a & b


def wait_members(stack: Stack, wanted: dict[str, set[int]] | None, *, timeout_s: float) -> float:
    """Seconds until the group is stable with ``wanted`` (None: shared by A and B)."""

    def reached() -> bool:
        now = mapper_members(stack)
        return shared(now) if wanted is None else now == wanted

    return wait_until(reached, timeout_s=timeout_s, what=f"mapper group {wanted or 'shared'}")


def exited(mapper: ServiceProcess) -> bool:
    return mapper.process is not None and mapper.process.poll() is not None


def log_of(mapper: ServiceProcess) -> str:
    return mapper.log_path.read_text(errors="replace")


def assignments(mapper: ServiceProcess) -> list[set[int]]:
    """Every assignment the instance logged (after its state was ready), in order."""
    return [
        {int(n) for n in found.split(",") if n.strip()}
        for found in ASSIGNED.findall(log_of(mapper))
    ]


def restored(mapper: ServiceProcess) -> set[int]:
    """The partitions the instance restored state records for from the changelog."""
    found: set[int] = set()
    for text in RESTORED.findall(log_of(mapper)):
        found |= {int(p) for p, n in re.findall(r"(\d+): (\d+)", text) if int(n) > 0}
    return found


def written_twice(stack: Stack) -> int:
    """Event ids more than once in ``profile-updates`` read uncommitted: aborted
    outputs included (a zombie's refused transaction), which a commit would have
    made duplicates."""
    seen = Counter[str]()
    for message in read_committed(
        stack.bootstrap, stack.topic("profile-updates"), timeout_s=60, uncommitted=True
    ):
        seen[CONTRACTS.profile_update.decode(message.value() or b"").event_id] += 1
    return sum(1 for n in seen.values() if n > 1)


def rounds_acked(load: Load, rounds: float) -> bool:
    return len(load.acked) >= rounds * RECORDS


@pytest.mark.timeout(300)
def test_partitions_move_to_a_second_mapper_and_back_under_load(
    stack: Stack, kafka_bootstrap: str
) -> None:
    with mappers(stack) as (a, b):
        a.start()
        a.wait_ready()
        load = Load(kafka_bootstrap, stack.prefix)
        steady = SteadyLoad(load, records=RECORDS, rounds=ROUNDS, pause_s=PAUSE_S).start()
        try:
            wait_until(lambda: rounds_acked(load, 3), timeout_s=60, what="3 rounds acked")
            # B joins: the group rebalances, some of A's partitions move to B, their
            # state restored from the changelog A wrote.
            b.start()
            b.wait_ready()
            shared_in = wait_members(stack, None, timeout_s=60)
            # Each logs its assignment once its state is ready, which may be just after
            # the group is stable.
            wait_until(
                lambda: shared({"mapper-a": assignments(a)[-1], "mapper-b": assignments(b)[-1]}),
                timeout_s=30,
                what="A and B logged their shares",
            )
            moved = assignments(b)[-1]
            assert moved and moved == ALL - assignments(a)[-1], (assignments(a), moved)
            assert restored(b) == moved, f"B restored {restored(b)}, took {moved}"
            # Both map a few rounds, then A stops (a static member does not leave the
            # group: B takes A's partitions once A's session has timed out).
            more = len(load.acked) / RECORDS + 5
            wait_until(lambda: rounds_acked(load, more), timeout_s=60, what="5 more rounds")
            stopped = time.monotonic()
            assert a.stop() == 0, a.log_tail()
            alone_in = wait_members(stack, {"mapper-b": ALL}, timeout_s=60)
            wait_until(lambda: assignments(b)[-1] == ALL, timeout_s=60, what="B has all")
            left = ROUNDS - len(load.acked) / RECORDS
            assert left >= 5, "the load ended before B had every partition: nothing tested"
            steady.finish()
        finally:
            steady.stop()
        print(
            f"[fault] B joined: shared in {shared_in:.1f}s, B took {sorted(moved)}; "
            f"A stopped: B alone in {alone_in:.1f}s with {left:.0f} of {ROUNDS} rounds to go, "
            f"restored {sorted(restored(b))}"
        )
        outcome = check_updates(load, since=stopped)
        outcome.assert_exact("partitions moved A -> A+B -> B under load")
        assert audited_twice(kafka_bootstrap, stack.prefix) == []
        assert b.process is not None and b.process.poll() is None, b.log_tail()


@pytest.mark.timeout(300)
def test_a_frozen_mapper_is_fenced_when_it_wakes(stack: Stack, kafka_bootstrap: str) -> None:
    with mappers(stack) as (a, b):
        a.env[FREEZE_ENV] = FREEZE_AT
        a.start()
        a.wait_ready()
        b.start()
        b.wait_ready()
        wait_members(stack, None, timeout_s=60)
        a_had = (mapper_members(stack) or {})["mapper-a"]
        load = Load(kafka_bootstrap, stack.prefix)
        steady = SteadyLoad(load, records=RECORDS, rounds=ROUNDS, pause_s=PAUSE_S).start()
        try:
            # A freezes inside a transaction: its outputs on the broker, not committed,
            # and its offsets not sent (else its commit would be legitimate on waking).
            assert a.process is not None
            pid = a.process.pid
            wait_until(lambda: stopped(pid), timeout_s=60, what="A frozen")
            frozen = time.monotonic()
            at_round = len(load.acked) / RECORDS
            assert transaction_held(stack, "profile-updates"), "A froze holding no update"
            # A's session times out (15 s): the group drops it, B gets every partition.
            taken_in = wait_members(stack, {"mapper-b": ALL}, timeout_s=60)
            # A wakes as a zombie: its consumed offsets belong to a generation that is
            # gone, so whatever it was doing for A's old partitions must not commit.
            a.signal(signal.SIGCONT)
            woke = time.monotonic()
            woke_round = len(load.acked) / RECORDS
            # The load goes on, with both instances live once A has rejoined (or with
            # B alone if A, fenced, exits).
            assert woke_round < ROUNDS - 10, "the load ended before A woke: nothing tested"
            wait_until(
                lambda: exited(a) or shared(mapper_members(stack)),
                timeout_s=90,
                what="A rejoined or exited",
            )
            settled_in = time.monotonic() - woke
            steady.finish()
        finally:
            steady.stop()
        a_code = a.process.poll() if a.process is not None else None
        fate = f"exited {a_code}" if a_code is not None else f"rejoined in {settled_in:.1f}s"
        print(
            f"[fault] A frozen mid-transaction with {sorted(a_had)} (round {at_round:.0f}); "
            f"B took all in {taken_in:.1f}s; A woke at round {woke_round:.0f} of {ROUNDS} "
            f"and {fate}"
        )
        for line in log_of(a).splitlines():
            if "aborted" in line or "fenced" in line.lower() or "Error" in line:
                print(f"[fault] A: {line[:300]}")
        outcome = check_updates(load, since=frozen)
        outcome.assert_exact("A frozen past its session, then woken")
        zombie = written_twice(stack)
        print(f"[fault] aborted updates of A that B emitted again: {zombie}")
        # The zombie's transaction was refused and aborted (or A, fenced, ended) ...
        assert a_code is not None or "transaction aborted" in log_of(a), a.log_tail()
        # ... and it held updates B emitted again: committed, they were duplicates.
        assert zombie > 0, "the frozen transaction held no update B mapped: nothing tested"
        assert audited_twice(kafka_bootstrap, stack.prefix) == []
        assert b.process is not None and b.process.poll() is None, b.log_tail()
