"""Several webhook workers on one port: every request served, metrics summed, clean stop."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.support.services import Stack, http_get
from tests.support.webhooks import contact, post_webhook

pytestmark = pytest.mark.integration


def children(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return {int(child) for child in found.stdout.split()}


def alive(pid: int) -> bool:
    return (
        subprocess.run(["kill", "-0", str(pid)], capture_output=True, check=False).returncode == 0
    )


def test_two_workers_share_the_port_and_stop_together(stack: Stack) -> None:
    stack.config["services"]["ingest"]["workers"] = 2
    stack.write_config()
    stack.start("ingest")
    ingest = stack["ingest"]
    assert ingest.process is not None
    deadline = time.monotonic() + 30
    while not children(ingest.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    [worker] = children(ingest.process.pid)

    for batch in range(40):
        body = [contact(f"w{batch}-{i}") for i in range(5)]
        assert post_webhook(ingest.url, body)[0] == 200

    status, text = http_get(f"http://127.0.0.1:{ingest.admin_port}/metrics")
    assert status == 200
    received = re.search(
        rb'crmsync_events_received_total\{origin="WEBHOOK",source="demo"\} ([0-9.]+)', text
    )
    assert received is not None and float(received.group(1)) == 200.0

    assert ingest.stop() == 0
    deadline = time.monotonic() + 30
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(worker), "a worker outlived ingest"
