"""One POST of a notice, and what its answer means, for the HTTP channels.

A 2xx is delivery. No answer (refused, reset, timed out), a 408, a 429 or a 5xx may
pass: ``RetryLater``, with the wait ``Retry-After`` asks for. Any other answer is
final: ``ChannelRefused``. Neither the URL (a Slack webhook's is its secret) nor the
headers are ever put in a failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

import httpx

from services.core.http import TRANSIENT
from services.core.retry import RetryLater, retry_after_seconds
from services.notify.channels.base import ChannelRefused

TRANSIENT_STATUS: Final = frozenset({408, 429})
EXCERPT_LIMIT: Final = 100


def judge(response: httpx.Response) -> None:
    """Return on delivery; raise what the answer means otherwise."""
    status = response.status_code
    if 200 <= status < 300:
        return
    if status in TRANSIENT_STATUS or status >= 500:
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        raise RetryLater(f"http {status}", retry_after_s=wait)
    # Slack answers a code here (invalid_payload, no_service): the reason to show.
    excerpt = response.content[:EXCERPT_LIMIT].decode("utf-8", errors="replace").strip()
    raise ChannelRefused(f"http {status}: {excerpt}" if excerpt else f"http {status}")


async def post(
    client: httpx.AsyncClient,
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
) -> None:
    try:
        # httpx bounds each phase; this bounds the whole exchange, a trickling answer too.
        async with asyncio.timeout(timeout_s):
            response = await client.post(url, content=body, headers=dict(headers))
    except TRANSIENT as exc:
        raise RetryLater(type(exc).__name__) from exc
    judge(response)
