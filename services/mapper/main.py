"""The mapper service: prepare Kafka, then run the faust worker until SIGTERM.

faust's worker owns the event loop and the signals: on SIGTERM it stops the agent,
flushes its producer and commits what was processed, then exits.
"""

from __future__ import annotations

import logging
import time

import faust

from services.core.bootstrap import prepare_kafka_blocking
from services.core.contracts import load_contracts
from services.core.runtime import service_settings
from services.core.schema_topic import schema_resolver
from services.mapper.app import create_app

log = logging.getLogger(__name__)


def main() -> None:
    settings = service_settings("mapper")
    contracts = load_contracts()
    contracts.catalog.add_resolver(
        schema_resolver(settings.kafka, client_id="crmsync-mapper-schemas")
    )
    started = time.monotonic()
    if not prepare_kafka_blocking(
        settings.kafka, catalog=contracts.catalog, client_id="crmsync-mapper"
    ):
        return
    log.info("Kafka prepared in %.1fs", time.monotonic() - started)
    app = create_app(settings, contracts=contracts)
    worker = faust.Worker(
        app, override_logging=False, redirect_stdouts=False, quiet=True, loglevel="info"
    )
    worker.execute_from_commandline()
