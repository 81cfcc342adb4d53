"""A transaction that fails at a random message of a batch spanning several
partitions: the batch is consumed again whole, nothing skipped, nothing twice."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest

from tests.faults.engine import engine_settings, prepare_topics, running_engine
from tests.faults.model import Load, audited_twice, check_updates

pytestmark = [pytest.mark.integration, pytest.mark.faults]

RECORDS = 90  # 30 a partition, in one batch
OUTPUTS_PER_CHANGE = 3  # state, update, audit


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_abort_at_a_random_message_rewinds_every_partition(
    kafka_bootstrap: str, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    fail_at = rng.randint(2, RECORDS * OUTPUTS_PER_CHANGE - 1)
    prefix = f"t{uuid.uuid4().hex[:10]}."
    settings = engine_settings(
        bootstrap=kafka_bootstrap,
        prefix=prefix,
        workdir=tmp_path,
        # One batch takes every partition's changes.
        mapper={"batch_max_wait_ms": 2000},
    )
    prepare_topics(settings)
    load = Load(kafka_bootstrap, prefix)
    for n in range(RECORDS):
        load.change(f"r{n}", 1)
    load.flush()
    started = time.monotonic()
    with running_engine(settings, fail_at=fail_at) as (_engine, failing):
        outcome = check_updates(load, since=started, timeout_s=60)
        assert failing is not None and failing.failed, "the failure was not injected"
    print(f"[fault] produce() failed at call {fail_at} of the batch (seed {seed})")
    outcome.assert_exact(f"abort at message {fail_at}")
    assert audited_twice(kafka_bootstrap, prefix) == []
