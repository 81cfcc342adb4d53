"""``crmsync config validate``: check a config file without starting anything.

It reads the file itself (the other commands get their settings from ``main``), since
an invalid config is its answer, not a failure to start: every problem is listed,
with the path inside the file and the line, and the command exits 2. ``--json``
prints ``{"config", "valid", "sources", "destinations"}`` or ``{"config", "valid":
false, "errors": [{"location", "line", "message"}]}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from services.cli.exit_codes import DONE, USAGE
from services.cli.json_output import print_json
from services.core.config import ConfigError, config_path, load_settings


def validate(config: str | Path | None, *, as_json: bool) -> int:
    path = config_path(config)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        if as_json:
            errors = [
                {"location": p.location, "line": p.line, "message": p.message} for p in exc.problems
            ]
            print_json({"config": str(path), "valid": False, "errors": errors})
        else:
            sys.stderr.write(f"{exc}\n")
        return USAGE
    sources = sorted(settings.sources)
    destinations = sorted(settings.destinations)
    if as_json:
        print_json(
            {
                "config": str(path),
                "valid": True,
                "sources": sources,
                "destinations": destinations,
            }
        )
    else:
        shown_sources = ", ".join(sources) or "none"
        shown_destinations = ", ".join(destinations) or "none"
        print(f"{path}: valid (sources: {shown_sources}; destinations: {shown_destinations})")
    return DONE
