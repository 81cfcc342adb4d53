"""SIGTERM to any service mid-stream loses nothing that was acknowledged."""

from __future__ import annotations

import itertools
import threading
import time
import urllib.error

import pytest

from tests.support.polling import wait_for
from tests.support.services import Stack
from tests.support.store import stored_record_ids
from tests.support.webhooks import contact, post_webhook

pytestmark = [pytest.mark.integration, pytest.mark.faults]


class Sender(threading.Thread):
    """Posts batches of new contacts non-stop; remembers which ones were acknowledged."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.acked: set[str] = set()
        self.sent: set[str] = set()
        self.refused = 0
        self.stopping = threading.Event()
        self._ids = itertools.count()

    def run(self) -> None:
        while not self.stopping.is_set():
            batch = [contact(f"r{next(self._ids)}", first_name="S") for _ in range(10)]
            ids = {c["id"] for c in batch}
            self.sent |= ids
            try:
                status, _, _ = post_webhook(self.url, batch, timeout_s=15)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                status = 0
            if status == 200:
                self.acked |= ids
            else:
                self.refused += 1
                time.sleep(0.05)


@pytest.mark.timeout(420)
def test_sigterm_each_service_mid_stream_loses_nothing_acknowledged(stack: Stack) -> None:
    stack.start()
    sender = Sender(stack["ingest"].url)
    sender.start()
    try:
        for name in ("ingest", "mapper", "writer"):
            target = len(sender.acked) + 50
            assert wait_for(lambda target=target: len(sender.acked) > target, timeout_s=60)
            service = stack[name]
            assert service.stop() == 0, service.log_tail()
            service.start()
            service.wait_ready()
    finally:
        sender.stopping.set()
        sender.join(timeout=30)

    assert len(sender.acked) > 200
    wait_for(lambda: sender.acked <= stored_record_ids(stack.db_path), timeout_s=120)
    lost = sender.acked - stored_record_ids(stack.db_path)
    assert not lost, f"{len(lost)} acknowledged contacts lost, e.g. {sorted(lost)[:5]}"
    assert stored_record_ids(stack.db_path) <= sender.sent
