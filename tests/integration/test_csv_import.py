"""``crmsync import csv`` for real: a CLI process, the real broker, the barrier protocol."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.core.codecs import load_contracts
from services.core.contracts import ControlKind, Origin
from tests.support.broker_fixtures import ReadAll
from tests.support.services import REPO_ROOT, SECRETS_ENV, Stack

pytestmark = pytest.mark.integration

CONTRACTS = load_contracts()


def crmsync(stack: Stack, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "--config", str(stack.config_path), *args],
        cwd=REPO_ROOT,
        env={**os.environ, **SECRETS_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_csv_import_is_a_full_sync_with_rejected_rows_kept(
    stack: Stack, tmp_path: Path, read_topic: ReadAll
) -> None:
    export = tmp_path / "contacts.csv"
    lines = ["id,email,first_name"]
    lines += [f"{i},p{i}@example.com,P{i}" for i in range(1000)]
    lines.insert(500, "broken-row-without-columns")
    lines.insert(700, ",nobody@example.com,Nobody")
    export.write_text("\n".join(lines) + "\n")

    process = crmsync(stack, "import", "csv", "demo", str(export))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "COMPLETED, 1000 rows imported, 2 rejected" in output

    barrier = [
        CONTRACTS.sync_control.decode(m.value())
        for m in read_topic(stack.topic("barrier"), count=2)
    ]
    assert [c.kind for c in barrier] == [ControlKind.STARTED, ControlKind.COMPLETED]
    assert barrier[1].records_total == 1000
    records = read_topic(stack.topic("fullsync"), count=1000)
    changes = [CONTRACTS.contact_change.decode(m.value()) for m in records]
    assert {c.origin for c in changes} == {Origin.CSV_IMPORT}
    assert len({c.record_id for c in changes}) == 1000
    rejected = [
        CONTRACTS.rejected_event.decode(m.value())
        for m in read_topic(stack.topic("rejected"), count=2)
    ]
    assert sorted(r.reason for r in rejected) == [
        "line 501: 1 columns, the header has 3",
        "line 701.id: empty id",
    ]


def test_interrupting_an_import_cancels_it(
    stack: Stack, tmp_path: Path, read_topic: ReadAll
) -> None:
    export = tmp_path / "big.csv"
    with export.open("w") as handle:
        handle.write("id,email\n")
        for i in range(400_000):
            handle.write(f"{i},p{i}@example.com\n")
    process = crmsync(stack, "import", "csv", "demo", str(export), "--page-size", "500")
    assert process.stdout is not None
    while "rows," not in process.stdout.readline():
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "CANCELLED" in output
    barrier = [
        CONTRACTS.sync_control.decode(m.value())
        for m in read_topic(stack.topic("barrier"), count=2)
    ]
    assert [c.kind for c in barrier] == [ControlKind.STARTED, ControlKind.CANCELLED]
