"""The CLI's side of ingest's admin API: one authenticated JSON call."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Final

from services.core.config import Settings

INGEST_URL_ENV: Final = "CRMSYNC_INGEST_URL"


def ingest_url(settings: Settings) -> str:
    """``CRMSYNC_INGEST_URL``, else ingest's admin listener (0.0.0.0 -> loopback)."""
    configured = os.environ.get(INGEST_URL_ENV)
    if configured:
        return configured.rstrip("/")
    http = settings.services.ingest.admin
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host  # noqa: S104
    return f"http://{host}:{http.port}"


def admin_call(settings: Settings, method: str, path: str) -> tuple[int, dict[str, Any]]:
    token_ref = settings.services.ingest.admin_token
    request = urllib.request.Request(f"{ingest_url(settings)}{path}", method=method)  # noqa: S310
    if token_ref is not None:
        request.add_header("Authorization", f"Bearer {token_ref.resolve()}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        try:
            return exc.code, json.loads(payload) if payload else {}
        except ValueError:
            return exc.code, {"error": payload.decode(errors="replace")[:200]}
    except urllib.error.URLError as exc:
        return 0, {"error": f"ingest not reachable at {ingest_url(settings)}: {exc.reason}"}
