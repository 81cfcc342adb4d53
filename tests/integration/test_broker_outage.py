"""Guarantee 1 under a broker outage: 503 + Retry-After, nothing half written, then recovery."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker_fixtures import ReadAll
from tests.support.kafka import LocalKafka
from tests.support.polling import wait_for
from tests.support.services import Stack, http_get
from tests.support.store import attribute
from tests.support.webhooks import contact, post_webhook

pytestmark = [pytest.mark.integration, pytest.mark.faults]


@pytest.fixture
def outage_kafka() -> Iterator[LocalKafka]:
    cluster = LocalKafka(name="outage", port=19392)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(purge=True)


def test_webhook_during_outage_gets_503_and_nothing_is_half_written(
    outage_kafka: LocalKafka, tmp_path: Path, read_topic: ReadAll
) -> None:
    stack = Stack(bootstrap=outage_kafka.bootstrap, workdir=tmp_path / "stack")
    try:
        stack.start("ingest")
        ingest = stack["ingest"]
        assert post_webhook(ingest.url, contact("before"))[0] == 200

        outage_kafka.stop()
        refused = [contact(f"during-{i}", first_name="X") for i in range(25)]
        started = time.monotonic()
        status, headers, body = post_webhook(ingest.url, refused)
        elapsed = time.monotonic() - started
        assert status == 503, body
        assert int(headers["Retry-After"]) > 0
        # Answered within the delivery timeout (5 s in the test config), not hung.
        assert elapsed < 10
        assert wait_for(lambda: http_get(f"{ingest.url}/readyz")[0] == 503, timeout_s=30)

        outage_kafka.start()
        assert wait_for(ingest.ready, timeout_s=90)
        # Nothing of the refused request reached Kafka: only the first change is there.
        changes = read_topic(
            stack.topic("changes"), count=2, timeout_s=10, bootstrap=outage_kafka.bootstrap
        )
        assert [m.key() for m in changes] == [b"demo:before"]

        # The CRM's retry now succeeds and flows through to the store.
        assert post_webhook(ingest.url, refused)[0] == 200
        stack.start("mapper", "writer")
        assert wait_for(
            lambda: attribute(stack.db_path, record_id="during-24", name="first_name"),
            timeout_s=60,
        )
        assert attribute(stack.db_path, record_id="before", name="email")
    finally:
        stack.stop()
