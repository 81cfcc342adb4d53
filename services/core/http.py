"""The one outbound HTTP client: httpx, asynchronous for the connectors' API calls,
synchronous for the writer's HTTP store and the CLI.

httpx is chosen over aiohttp (which stays for crmsync's own HTTP servers) because it
is one library with the same API both ways: the async connectors and the threaded
writer share timeouts, headers and the errors that mean "try again". Retrying itself
is the one retry policy's job (``services.core.retry``), never the client's.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Final

import httpx


def _user_agent() -> str:
    try:
        return f"crmsync/{version('crmsync')}"
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "crmsync"


USER_AGENT: Final = _user_agent()
# A client's default: callers with a setting of their own pass it per call.
DEFAULT_TIMEOUT_S: Final = 30.0

TRANSIENT: Final[tuple[type[Exception], ...]] = (httpx.TransportError, TimeoutError)
"""What a retry may cure: no answer (refused, reset, timed out, a broken protocol).
An answer, whatever its status, is the caller's to judge."""


def async_client(
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    base_url: str = "",
    headers: Mapping[str, str] | None = None,
) -> httpx.AsyncClient:
    """A pooled client for many calls; ``timeout_s`` bounds each phase (connect, each
    read and write, a wait for a pooled connection)."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        timeout=timeout_s,
    )


def client(
    *,
    timeout_s: float,
    base_url: str = "",
    headers: Mapping[str, str] | None = None,
) -> httpx.Client:
    """The synchronous twin of ``async_client``."""
    return httpx.Client(
        base_url=base_url,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        timeout=timeout_s,
    )
