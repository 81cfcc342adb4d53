"""How a rule refuses a change: the field (or attribute) and the reason."""

from __future__ import annotations


class RuleError(Exception):
    """A value the rules cannot accept; the whole change is rejected with this reason,
    so it can be replayed once the config (or the CRM's data) is fixed."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")
