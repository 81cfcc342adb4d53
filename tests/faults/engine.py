"""The real MapperEngine in this process, on the real broker, for faults that need a
hand inside it (a producer that fails at a chosen message)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from services.core.bootstrap import prepare_kafka
from services.core.codecs import WireContracts, load_contracts
from services.core.config import Settings
from services.mapper.engine import MapperEngine
from tests.support.services import stack_config


def engine_settings(
    *, bootstrap: str, prefix: str, workdir: Path, mapper: dict[str, Any] | None = None
) -> Settings:
    ports = {"ingest": 0, "admin": 0, "mapper": 0, "writer": 0, "outbound": 0, "console": 0}
    config = stack_config(bootstrap=bootstrap, prefix=prefix, workdir=workdir, ports=ports)
    config["services"]["mapper"].update(mapper or {})
    return Settings.model_validate(config)


class FailingProducer:
    """The engine's real producer, whose ``fail_at``-th produce() raises as librdkafka
    does once a transaction has turned abortable (e.g. a send that failed for good)."""

    def __init__(self, real: Producer, *, fail_at: int) -> None:
        self._real = real
        self._fail_at = fail_at
        self.calls = 0
        self.failed = False

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls == self._fail_at:
            self.failed = True
            raise KafkaException(
                KafkaError(
                    KafkaError._STATE,
                    "injected: transaction is in an abortable state",
                    txn_requires_abort=True,
                )
            )
        self._real.produce(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def prepare_topics(settings: Settings) -> None:
    """The topics and schemas, as a service does before it starts its loop."""
    prepare_kafka(settings.kafka, catalog=load_contracts().catalog, client_id="fault-tests")


@contextmanager
def running_engine(
    settings: Settings, *, fail_at: int | None = None, contracts: WireContracts | None = None
) -> Iterator[tuple[MapperEngine, FailingProducer | None]]:
    """The engine on a thread until the block ends; its failure fails the block."""
    wire = contracts or load_contracts()
    prepare_topics(settings)
    stop = threading.Event()
    failing: list[FailingProducer] = []

    def wrap(producer: Producer) -> Producer:
        failing.append(FailingProducer(producer, fail_at=fail_at or 0))
        return failing[0]  # type: ignore[return-value]  # it quacks like a Producer

    engine = MapperEngine(
        settings, contracts=wire, stop=stop, wrap_producer=wrap if fail_at else None
    )
    failures: list[BaseException] = []

    def run() -> None:
        try:
            engine.run()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, name="fault-engine")
    thread.start()
    try:
        yield engine, failing[0] if failing else None
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the engine did not stop"
    assert not failures, f"the engine failed: {failures[0]!r}"
