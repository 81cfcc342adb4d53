"""``crmsync-ingest`` / ``python -m services.ingest``: start one ingest worker
(services.core.launcher: the workers' shared metrics are chosen before ``main`` is
imported)."""

from __future__ import annotations

from services.core.config import Settings
from services.core.launcher import ServiceRun, launch


def main() -> None:
    launch("ingest", workers=_workers, load_run=_load_run)


def _workers(settings: Settings) -> int:
    return settings.services.ingest.workers


def _load_run() -> ServiceRun:
    from services.ingest.main import run

    return run
