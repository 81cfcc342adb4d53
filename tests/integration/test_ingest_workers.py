"""Several webhook workers on one port: every request served, metrics summed, clean stop."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.services import Stack, child_pids, http_get, pid_alive
from tests.support.webhooks import contact, post_webhook

pytestmark = pytest.mark.integration


def test_two_workers_share_the_port_and_stop_together(stack: Stack) -> None:
    stack.config["services"]["ingest"]["workers"] = 2
    stack.write_config()
    stack.start("ingest")
    ingest = stack["ingest"]
    assert ingest.process is not None
    deadline = time.monotonic() + 30
    while not child_pids(ingest.process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    [worker] = child_pids(ingest.process.pid)

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
    while pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pid_alive(worker), "a worker outlived ingest"
