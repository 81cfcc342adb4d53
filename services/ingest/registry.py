"""Which connector module serves each source kind; ``build_connectors`` picks it.

Each CRM module exposes ``connectors(source, settings) -> SourceConnectors``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from services.core.config import SourceSettings
from services.ingest.connectors import (
    generic,
    generic_rest,
    hubspot,
    pipedrive,
    s360,
    salesforce,
    webcrm,
)
from services.ingest.connectors.base import SourceConnectors

BUILDERS: Final[dict[str, Callable[[str, Any], SourceConnectors]]] = {
    "generic_webhook": generic.connectors,
    "generic_rest": generic_rest.connectors,
    "hubspot": hubspot.connectors,
    "salesforce": salesforce.connectors,
    "pipedrive": pipedrive.connectors,
    "webcrm": webcrm.connectors,
    "s360": s360.connectors,
}


def build_connectors(source: str, settings: SourceSettings) -> SourceConnectors:
    builder = BUILDERS.get(settings.kind)
    if builder is None:
        raise ValueError(f"no connector for source kind {settings.kind!r}")
    return builder(source, settings)
