"""The CLI's side of ingest's admin API: one authenticated JSON call."""

from __future__ import annotations

import json
import os
from typing import Any, Final

from services.core.config import HttpListen, Settings
from services.core.http import TRANSIENT, client

INGEST_URL_ENV: Final = "CRMSYNC_INGEST_URL"


def listener_url(env: str, listen: HttpListen) -> str:
    """The URL in the environment variable ``env``, else the configured listener's
    (a wildcard host reached on loopback)."""
    configured = os.environ.get(env)
    return configured.rstrip("/") if configured else listen.local_url


def ingest_url(settings: Settings) -> str:
    """``CRMSYNC_INGEST_URL``, else ingest's admin listener."""
    return listener_url(INGEST_URL_ENV, settings.services.ingest.admin)


def admin_call(settings: Settings, method: str, path: str) -> tuple[int, dict[str, Any]]:
    token_ref = settings.services.ingest.admin_token
    headers = {"Authorization": f"Bearer {token_ref.resolve()}"} if token_ref is not None else {}
    try:
        with client(timeout_s=30, headers=headers) as http:
            response = http.request(method, f"{ingest_url(settings)}{path}")
    except TRANSIENT as exc:
        reason = str(exc) or type(exc).__name__
        return 0, {"error": f"ingest not reachable at {ingest_url(settings)}: {reason}"}
    payload = response.content
    try:
        return response.status_code, json.loads(payload) if payload else {}
    except ValueError:
        return response.status_code, {"error": payload.decode(errors="replace")[:200]}
