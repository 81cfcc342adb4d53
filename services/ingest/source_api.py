"""How a source's pulls reach its CRM: one ``ApiClient`` per source, built alike for
polls, full syncs and test syncs.

The client takes the connector's own credentials when it has them (OAuth, a session
login), else the bearer token of the source's ``api`` settings, and the CRM's own
throttling signal and wait header besides 429 and ``Retry-After``.
"""

from __future__ import annotations

import httpx

from services.core.api_client import ApiClient, StaticBearer
from services.ingest.connectors.base import SourceConnectors


def source_api_client(
    source: str, connectors: SourceConnectors, *, session: httpx.AsyncClient
) -> ApiClient:
    """The client ``source``'s pulls call its API through; ValueError for a source
    without API settings (webhooks only)."""
    api = connectors.api
    if api is None:
        raise ValueError(f"source {source!r} has no API to call")
    return ApiClient(
        source=source,
        settings=api,
        session=session,
        credentials=connectors.credentials
        or StaticBearer(api.token.resolve() if api.token else None),
        is_throttled=connectors.is_throttled,
        wait_hint=connectors.wait_hint,
    )
