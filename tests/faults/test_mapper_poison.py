"""Poison at the mapper: each bad input ends in ``rejected`` with its reason, in the
same transaction as everything else, and the stream goes on around it."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.core.codecs import load_contracts
from services.core.contracts import ContactChange, Operation
from tests.faults.engine import engine_settings, prepare_topics, running_engine
from tests.faults.model import Load, check_updates, read_committed

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CONTRACTS = load_contracts()


def oversized_change(record: str) -> ContactChange:
    """An input the broker takes (600 kB) whose record state would not be: the state
    keeps the CRM field and the attribute it maps to, 1.2 MB together."""
    now = datetime.now(UTC)
    return ContactChange(
        source="demo",
        record_id=record,
        operation=Operation.UPSERT,
        event_id=f"e-{record}",
        source_modified_at=now,
        received_at=now,
        fields={"email": f"{record}@example.com", "first_name": "x" * 600_000},
    )


@pytest.mark.timeout(240)
def test_each_poison_is_rejected_with_its_reason_and_the_rest_flows(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    settings = engine_settings(
        bootstrap=kafka_bootstrap,
        prefix=prefix,
        workdir=tmp_path,
        mapper={"batch_max_wait_ms": 1000},
    )
    prepare_topics(settings)
    load = Load(kafka_bootstrap, prefix)
    for n in range(30):
        load.change(f"r{n}", 1)
    big = oversized_change("big")
    load.raw(big.key, CONTRACTS.contact_change.encode(big))
    load.raw(b"demo:garbage", b"\x00not avro")
    load.raw(b"demo:empty", b"")
    for n in range(30):
        load.change(f"r{n}", 2)
    load.flush()
    started = time.monotonic()
    with running_engine(settings):
        outcome = check_updates(load, since=started, timeout_s=60)
        outcome.assert_exact("poison among good changes")
        rejected = [
            CONTRACTS.rejected_event.decode(m.value() or b"")
            for m in read_committed(kafka_bootstrap, f"{prefix}rejected")
        ]
    by_key = {r.key: r for r in rejected}
    assert set(by_key) == {big.key, b"demo:garbage", b"demo:empty"}, [r.reason for r in rejected]
    assert "mapper-state message would be" in by_key[big.key].reason
    assert by_key[big.key].event_id == "e-big"
    assert by_key[big.key].value == CONTRACTS.contact_change.encode(big)
    assert by_key[b"demo:garbage"].reason.startswith("undecodable ContactChange")
    assert by_key[b"demo:empty"].reason.startswith("undecodable ContactChange")
    for rejection in rejected:
        assert rejection.origin_topic == f"{prefix}changes"
        assert rejection.origin_offset is not None
