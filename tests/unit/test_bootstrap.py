"""A service waits for Kafka with the one retry policy, until Kafka is ready or it is
told to stop."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.core import bootstrap
from services.core.config import KafkaSettings
from services.core.retry import RetryPolicy
from services.core.schema_topic import SchemaPublishError
from services.core.serde import SchemaCatalog

pytestmark = pytest.mark.unit


class Broker:
    """prepare_kafka's stand-in: fails ``failures`` times, then succeeds."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    def prepare(self, _settings: KafkaSettings, *, catalog: SchemaCatalog, client_id: str) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap, "KAFKA_RETRY", RetryPolicy(initial_s=0.01, max_s=0.02))


async def prepare(broker: Broker, stop: asyncio.Event, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(bootstrap, "prepare_kafka", broker.prepare)
    return await bootstrap.prepare_kafka_with_retry(
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        catalog=SchemaCatalog(),
        client_id="test",
        stop=stop,
    )


@pytest.mark.asyncio
@pytest.mark.usefixtures("fast")
async def test_kafka_not_ready_is_retried_until_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    down = KafkaException(KafkaError(KafkaError._TRANSPORT))
    broker = Broker([down, SchemaPublishError("schemas topic not there yet"), down])
    assert await prepare(broker, asyncio.Event(), monkeypatch) is True
    assert broker.calls == 4


@pytest.mark.asyncio
@pytest.mark.usefixtures("fast")
async def test_another_error_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = Broker([ValueError("a bug, not a broker away")])
    with pytest.raises(ValueError, match="a bug"):
        await prepare(broker, asyncio.Event(), monkeypatch)
    assert broker.calls == 1


@pytest.mark.asyncio
async def test_a_stop_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootstrap, "KAFKA_RETRY", RetryPolicy(initial_s=60, max_s=60))
    broker = Broker([KafkaException(KafkaError(KafkaError._TRANSPORT))] * 100)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)
    assert await asyncio.wait_for(prepare(broker, stop, monkeypatch), timeout=5) is False
    assert broker.calls == 1


@pytest.mark.asyncio
async def test_stopped_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    stop = asyncio.Event()
    stop.set()
    broker = Broker([])
    assert await prepare(broker, stop, monkeypatch) is False
    assert broker.calls == 0
