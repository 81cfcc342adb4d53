"""What the mapper says about a change it rejects or a value it drops: the reason the
rejected topic gets, and one log line without the record's values.

The rejected topic and the audit carry the full reason, value and all: they hold the
record anyway. A log line carries the change's source, event id and record id, where
(the CRM field or attribute a rule names) and a reason that leaves the value out,
since a value may be an email address or a phone number. The engine calls these for
every rejection and every ``drop_field`` drop; they decide nothing.
"""

from __future__ import annotations

import logging
from typing import Final

from services.core.contracts import ContactChange
from services.mapper.rules.errors import VALUE_LEFT_OUT, InvalidValue, RuleError
from services.mapper.rules.expressions import ExpressionError
from services.mapper.transaction import OutputTooLarge

log = logging.getLogger(__name__)

UNKNOWN: Final = "-"
"""In a log line, for what an input that could not be read does not say."""


class Refused(Exception):
    """This one input cannot be mapped; the reason goes to ``rejected``.

    ``summary``: the reason without the input's content, for the log, when the reason
    may quote it (a decoder's message can)."""

    def __init__(self, reason: str, *, summary: str | None = None) -> None:
        super().__init__(reason)
        self.summary = reason if summary is None else summary


def rejected_reason(error: BaseException) -> str:
    """The reason a rejected event carries, in full."""
    # Refusals and rule errors say what is wrong in their own words; anything else is
    # named by its type too, so that a bug is told apart from bad data.
    if isinstance(error, (Refused, OutputTooLarge, RuleError, ExpressionError)):
        return str(error)
    name = type(error).__name__
    return f"{name}: {error}" if str(error) else name


def log_rejection(
    error: BaseException, *, change: ContactChange | None, origin: tuple[str, int, int]
) -> None:
    """One WARNING line for an input rejected because of ``error``; ``change`` is None
    when the input could not be decoded."""
    where, reason = _without_values(error)
    topic, partition, offset = origin
    log.warning(
        "change rejected source=%s event_id=%s record_id=%s where=%s reason=%s "
        "topic=%s partition=%d offset=%d",
        change.source if change is not None else UNKNOWN,
        change.event_id if change is not None else UNKNOWN,
        change.record_id if change is not None else UNKNOWN,
        where,
        reason,
        topic,
        partition,
        offset,
    )


def log_dropped(change: ContactChange, refused: InvalidValue) -> None:
    """One INFO line for a value ``on_invalid: drop_field`` left out of ``change``."""
    log.info(
        "invalid value dropped source=%s event_id=%s record_id=%s attribute=%s where=%s reason=%s",
        change.source,
        change.event_id,
        change.record_id,
        refused.attribute,
        refused.error.where,
        refused.error.problem_without_value,
    )


def _without_values(error: BaseException) -> tuple[str, str]:
    """(where, reason) with no value of the record in the reason."""
    if isinstance(error, RuleError):
        return error.where, error.problem_without_value
    if isinstance(error, ExpressionError):
        text = str(error)
        return UNKNOWN, text.replace(error.value, VALUE_LEFT_OUT) if error.value else text
    if isinstance(error, Refused):
        return UNKNOWN, error.summary
    if isinstance(error, OutputTooLarge):
        return UNKNOWN, str(error)  # sizes and a topic name only
    # An unexpected error's message may hold anything the record held.
    return UNKNOWN, f"{type(error).__name__} (an unexpected error: see the rejected event)"
