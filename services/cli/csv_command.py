"""``crmsync import csv SOURCE FILE``: a CRM export file as a full sync of that source.

Runs in the CLI process with the same barrier protocol as an API full sync (see
``services.ingest.fullsync``): STARTED, every row to the fullsync topic (bad rows to
rejected, with their line number), then COMPLETED with the end offsets. Progress shows
each second (a bar on a terminal, a line elsewhere: services/cli/progress.py) and is
saved to the connector state, so ``crmsync fullsync status`` shows it too. Ctrl-C or
SIGTERM cancels: CANCELLED releases the held changes. ``--json`` prints the import as
``fullsync status`` shows a sync, once it ended; the words go to stderr then.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from services.cli.exit_codes import DONE, FAILED, USAGE
from services.cli.json_output import print_json
from services.cli.progress import progress_for
from services.core.bootstrap import prepare_kafka
from services.core.codecs import load_contracts
from services.core.config import Settings
from services.core.contracts import Origin
from services.core.kafka import TopicNames, client_config, end_offsets, producer_config
from services.ingest.admin import fullsync_json
from services.ingest.connectors.base import Stamp
from services.ingest.csv_import import CsvFileError, check_header, csv_pages
from services.ingest.fullsync import Codecs, FullSyncRun, Topics, cli_owner, new_sync_id
from services.ingest.publisher import KafkaPublisher
from services.ingest.state import FullSyncState, StateStore, SyncStatus, state_codec


def import_csv(
    settings: Settings, *, source: str, path: Path, page_size: int, as_json: bool = False
) -> int:
    if source not in settings.sources:
        sys.stderr.write(f"unknown source {source!r}\n")
        return USAGE
    try:
        check_header(path, settings.sources[source].csv)
    except (CsvFileError, OSError) as exc:
        sys.stderr.write(f"cannot import {path}: {exc}\n")
        return USAGE
    final = asyncio.run(
        _import(
            settings,
            source=source,
            path=path,
            page_size=page_size,
            notes=sys.stderr if as_json else sys.stdout,
        )
    )
    if final is None:
        return FAILED
    if as_json:
        print_json({"source": source, "file": str(path), **fullsync_json(final)})
    return DONE if final.status is SyncStatus.COMPLETED else FAILED


async def _import(
    settings: Settings, *, source: str, path: Path, page_size: int, notes: TextIO
) -> FullSyncState | None:
    """The import's final state; None when another full sync of the source runs."""
    contracts = load_contracts()
    topics = TopicNames.from_settings(settings.kafka)
    # Every codec made before the schemas are published (and registered).
    codec = state_codec(contracts.catalog)
    await asyncio.to_thread(
        prepare_kafka, settings.kafka, catalog=contracts.catalog, client_id="crmsync-cli"
    )
    publisher = KafkaPublisher(
        producer_config=producer_config(settings.kafka, client_id="crmsync-cli-import")
    )
    store = StateStore(topic=topics.connector_state, publisher=publisher, codec=codec)
    await asyncio.to_thread(store.load, client_config(settings.kafka, client_id="crmsync-cli"))
    current = store.fullsync(source)
    if current is not None and current.running:
        sys.stderr.write(f"full sync {current.sync_id} is running for {source}; not starting\n")
        await asyncio.to_thread(publisher.close)
        return None
    now = datetime.now(UTC)
    state = FullSyncState(
        sync_id=new_sync_id(source, now),
        status=SyncStatus.RUNNING,
        origin=Origin.CSV_IMPORT.value,
        owner=cli_owner(),
        started_at=now,
        updated_at=now,
    )
    run = FullSyncRun(
        source=source,
        state=state,
        pages=csv_pages(
            path,
            source=source,
            settings=settings.sources[source].csv,
            stamp=Stamp(Origin.CSV_IMPORT, state.sync_id),
            page_size=page_size,
        ),
        publisher=publisher,
        store=store,
        codecs=Codecs(
            changes=contracts.contact_change,
            controls=contracts.sync_control,
            rejected=contracts.rejected_event,
        ),
        topics=Topics(fullsync=topics.fullsync, barrier=topics.barrier, rejected=topics.rejected),
        mapping_version=settings.sources[source].mapping_version,
        changes_end=functools.partial(
            asyncio.to_thread, end_offsets, settings.kafka, topics.changes
        ),
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, run.cancel)
    try:
        await run.announce()
        print(f"importing {path} into {source} as {state.sync_id}", file=notes, flush=True)
        final = await _with_progress(run, label=source, notes=notes)
    finally:
        await asyncio.to_thread(publisher.close)
    print(
        f"{final.sync_id}: {final.status.value}, {final.records_done} rows imported, "
        f"{final.records_rejected} rejected" + (f" ({final.reason})" if final.reason else ""),
        file=notes,
        flush=True,
    )
    return final


async def _with_progress(run: FullSyncRun, *, label: str, notes: TextIO) -> FullSyncState:
    task = asyncio.create_task(run.run())
    started = time.monotonic()
    with progress_for(unit="rows", label=label, notes=notes) as shown:
        while not task.done():
            await asyncio.wait([task], timeout=1.0)
            if not task.done():
                state = run.state
                rate = state.records_done / max(time.monotonic() - started, 1e-6)
                shown.step(
                    done=state.records_done,
                    total=state.records_total,
                    line=(
                        f"  {state.records_done} rows, {state.records_rejected} rejected, "
                        f"{rate:.0f}/s"
                    ),
                    note=f"{state.records_rejected} rejected",
                )
    return task.result()
