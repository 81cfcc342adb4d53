"""What is worth telling: the cooldown of each incident and the group being gathered.

Pure logic, fed in arrival order by the notifier's collector and read by it when the
group's window closes; the clock is injected.

- An incident is *told* when the group holding it is taken. The same incident (same
  kind and subject) offered again within ``cooldown_s`` of that is not told again.
- An incident offered while the open group already holds it replaces it there (the
  latest counts win) and does not add a line.
- A resolution forgets the incident, so its next occurrence is told at once. If the
  incident had been told, a "resolved" entry joins the group (unless turned off); one
  still waiting in the open group is simply taken out, as nobody was told of it.
"""

from __future__ import annotations

from collections.abc import Callable

from services.notify.incidents import Entry, Incident, IncidentKey, Resolution, Status

Clock = Callable[[], float]


class Digest:
    def __init__(self, *, cooldown_s: float, send_resolved: bool, clock: Clock) -> None:
        self._cooldown_s = cooldown_s
        self._send_resolved = send_resolved
        self._clock = clock
        self._told: dict[IncidentKey, tuple[Incident, float]] = {}
        """Each incident told and not resolved since: the last one, and when."""
        self._open: dict[IncidentKey, Entry] = {}
        """The group being gathered, in arrival order."""

    @property
    def pending(self) -> bool:
        return bool(self._open)

    def offer(self, incident: Incident) -> bool:
        """Whether the incident joins the open group as a new line."""
        key = incident.key
        waiting = self._open.get(key)
        if waiting is not None and waiting.status is Status.FIRING:
            self._open[key] = Entry(incident, Status.FIRING)
            return False
        told = self._told.get(key)
        if told is not None and self._clock() - told[1] < self._cooldown_s:
            return False
        # A "resolved" still waiting is replaced: it is failing again, which is the news.
        self._open.pop(key, None)
        self._open[key] = Entry(incident, Status.FIRING)
        return True

    def resolve(self, resolution: Resolution) -> bool:
        """Whether a "resolved" entry joins the open group."""
        key = resolution.key
        waiting = self._open.get(key)
        if waiting is not None and waiting.status is Status.FIRING:
            del self._open[key]
        told = self._told.pop(key, None)
        if told is None or not self._send_resolved:
            return False
        self._open[key] = Entry(told[0], Status.RESOLVED)
        return True

    def take(self) -> tuple[Entry, ...]:
        """The open group, now told; a new group starts empty."""
        entries = tuple(self._open.values())
        now = self._clock()
        for entry in entries:
            if entry.status is Status.FIRING:
                self._told[entry.incident.key] = (entry.incident, now)
        self._open.clear()
        return entries
