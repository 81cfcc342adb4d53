"""Posting to a running ingest service the way a CRM would."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tests.support.services import DEMO_TOKEN


def post_webhook(
    base_url: str,
    body: Any,
    *,
    source: str = "demo",
    token: str | None = DEMO_TOKEN,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{base_url}/webhooks/{source}", data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        return exc.code, dict(exc.headers), json.loads(payload) if payload else {}


def contact(record_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": record_id,
        "updated_at": fields.pop("updated_at", "2026-11-23T09:00:00Z"),
        "email": fields.pop("email", f"{record_id}@example.com"),
        **fields,
    }
