"""Which entries of a group go to which channel: the kind's route (every channel when
the kind has none) and the channel's severity threshold. A "resolved" entry follows
its incident, so it reaches exactly the channels that were told of it."""

from __future__ import annotations

from collections.abc import Sequence

from services.notify.incidents import Entry, IncidentKind
from services.notify.settings import NotificationSettings


class Router:
    def __init__(self, settings: NotificationSettings) -> None:
        self._channels = tuple(settings.channels)
        self._routes: dict[IncidentKind, frozenset[str]] = {
            kind: frozenset(names) for kind, names in settings.routes.items()
        }
        self._thresholds = {
            name: (channel.min_severity or settings.min_severity).rank
            for name, channel in settings.channels.items()
        }

    def goes_to(self, entry: Entry, channel: str) -> bool:
        incident = entry.incident
        route = self._routes.get(incident.kind)
        if route is not None and channel not in route:
            return False
        return incident.level.rank >= self._thresholds[channel]

    def split(self, entries: Sequence[Entry]) -> dict[str, tuple[Entry, ...]]:
        """Channel -> its entries, for the channels that get any."""
        shares = {
            channel: tuple(entry for entry in entries if self.goes_to(entry, channel))
            for channel in self._channels
        }
        return {channel: share for channel, share in shares.items() if share}
