"""What the console tells operators, unasked: incidents for the notifier.

Every round the watcher looks at what the overview shows and at what the index got
since the last round:

- a source whose light is error because its polls keep failing after their retries:
  ``sync_failing`` (``auth_failing`` when the CRM refuses the credentials);
- a source whose light is set by its rejections: ``rejection_spike``;
- a full sync that completed or failed (the barrier topic): ``fullsync_finished``,
  ``fullsync_failed``;
- a destination that dead-lettered changes: ``destination_dead_letter``.

A source or destination back to healthy resolves its incidents, so the next failure
is told at once while a lasting one is told once per cooldown (the notifier's
digest, services/notify). Only what happens after the watcher started is told: the
index catching up on old topics does not replay history as alerts. Incidents carry
names, codes and counts, never a value or an email.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

from services.console.index import ConsoleIndex
from services.notify.incidents import Incident, IncidentKind
from services.notify.notifier import Notifier

log = logging.getLogger(__name__)

ROUND_S: Final = 15.0
HTTP_STATUS: Final = re.compile(r"\b([45]\d\d)\b")
SOURCE_KINDS: Final = (
    IncidentKind.SYNC_FAILING,
    IncidentKind.AUTH_FAILING,
    IncidentKind.REJECTION_SPIKE,
)

Overview = Callable[[], Awaitable[dict[str, Any]]]


class Watcher:
    def __init__(
        self,
        *,
        overview: Overview,
        index: ConsoleIndex,
        notifier: Notifier,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._overview = overview
        self._index = index
        self._notifier = notifier
        self._clock = clock
        self._since = clock()

    async def run(self, stop: asyncio.Event, *, every_s: float = ROUND_S) -> None:
        while not stop.is_set():
            try:
                await self.round()
            except Exception:  # a round that fails must not end the console
                log.exception("console watcher round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)

    async def round(self) -> None:
        overview = await self._overview()
        now = self._clock()
        for source in overview["sources"]:
            self._source(source)
        for destination in overview["destinations"]:
            if destination["health"]["light"] == "healthy":
                self._notifier.resolve(IncidentKind.DESTINATION_DEAD_LETTER, destination["name"])
        for controls in self._index.controls_since(self._since):
            self._control(controls)
        for name, count in self._index.dead_letters_since(self._since).items():
            self._notifier.notify(
                Incident(
                    IncidentKind.DESTINATION_DEAD_LETTER,
                    name,
                    reason="dead_lettered",
                    counts={"changes": count},
                )
            )
        self._since = now

    def _source(self, source: dict[str, Any]) -> None:
        name, light = source["name"], source["health"]["light"]
        rule = source["health"]["rule"]
        told: IncidentKind | None = None
        poll = source.get("poll") or {}
        failures = int(poll.get("consecutive_failures") or 0)
        if light == "error" and failures:
            told = (
                IncidentKind.AUTH_FAILING
                if rule.startswith("authentication failing")
                else IncidentKind.SYNC_FAILING
            )
            self._notifier.notify(
                Incident(
                    told,
                    name,
                    reason=_reason_code(str(poll.get("last_error") or "")),
                    counts={"failures": failures},
                )
            )
        elif light in ("error", "warning") and "changes rejected" in rule:
            told = IncidentKind.REJECTION_SPIKE
            rejected, received = _counts_in(rule)
            self._notifier.notify(
                Incident(
                    told,
                    name,
                    reason="rejected",
                    counts={"rejected": rejected, "received": received},
                )
            )
        if light == "healthy":
            for kind in SOURCE_KINDS:
                self._notifier.resolve(kind, name)

    def _control(self, control: Any) -> None:
        if control["kind"] == "COMPLETED":
            counts = {"records": int(control["records_total"] or 0)}
            self._notifier.notify(
                Incident(IncidentKind.FULLSYNC_FINISHED, control["source"], counts=counts)
            )
        elif control["kind"] == "FAILED":
            self._notifier.notify(
                Incident(IncidentKind.FULLSYNC_FAILED, control["source"], reason="failed")
            )


def _reason_code(error: str) -> str:
    """A short code for a poll's error: its HTTP status when it names one."""
    status = HTTP_STATUS.search(error)
    return f"http_{status.group(1)}" if status else "poll_failed"


def _counts_in(rule: str) -> tuple[int, int]:
    """The numbers of "N of M changes rejected" (the health rule's own words)."""
    numbers = [int(n) for n in re.findall(r"\d+", rule)[:2]]
    return (numbers[0], numbers[1]) if len(numbers) == 2 else (0, 0)
