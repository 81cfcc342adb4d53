"""How every ``--json`` prints: one JSON document on stdout, nothing else there."""

from __future__ import annotations

import json


def print_json(value: object) -> None:
    # Non-ASCII kept as is (names, reasons); datetimes and paths as their text.
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str), flush=True)
