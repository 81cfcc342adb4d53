"""The outcomes the notifier counts its messages by; the counters themselves are in
the catalogue (services/core/metrics.py). Labels are bounded: channels are named in
the config, outcomes are the few below."""

from __future__ import annotations

from typing import Final

from services.core import metrics as core_metrics

SENT: Final = "sent"
"""The channel took the message."""
REFUSED: Final = "refused"
"""The channel answered that it never will (a 4xx, an SMTP 5xx): not retried."""
GAVE_UP: Final = "gave_up"
"""Every attempt failed transiently, or the notifier closed while it waited."""
DROPPED: Final = "dropped"
"""The channel's backlog was full: its oldest message made room for a newer one."""
FAILED: Final = "failed"
"""An unexpected failure (a bug), logged with its traceback."""
NOTIFICATIONS_SENT: Final = core_metrics.NOTIFICATIONS_SENT
NOTIFICATIONS_DROPPED: Final = core_metrics.NOTIFICATIONS_DROPPED
