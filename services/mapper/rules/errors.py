"""How a rule refuses a value: the field (or attribute) and the reason, with and
without the value.

A refusal's full reason may quote the value (``'C' is not in the value map``): it goes
to the rejected topic and the audit, which carry the record's values anyway. Logs get
``problem_without_value``, since a value may be an email address or a phone number.
"""

from __future__ import annotations

from typing import Final, NamedTuple

VALUE_LEFT_OUT: Final = "the value"
"""What stands in for the value in ``problem_without_value``."""


class RuleError(Exception):
    """A value the rules cannot accept. Its rule's ``on_invalid`` decides: the whole
    change is rejected with this reason (so it can be replayed once the config or the
    CRM's data is fixed), or the value is dropped and the rest of the change applied."""

    def __init__(self, where: str, problem: str, *, value: str | None = None) -> None:
        """``value``: the value as ``problem`` quotes it, so that
        ``problem_without_value`` can leave it out. A problem that quotes no value
        passes none."""
        self.where = where
        self.problem = problem
        self.problem_without_value = problem.replace(value, VALUE_LEFT_OUT) if value else problem
        super().__init__(f"{where}: {problem}")


class InvalidValue(NamedTuple):
    """A value a rule refused that ``on_invalid: drop_field`` left out of the change:
    the attribute it would have set (``consent:<subscription>`` for a consent), and
    the refusal."""

    attribute: str
    error: RuleError
