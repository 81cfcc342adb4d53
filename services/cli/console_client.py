"""The CLI's side of the console's JSON API: rejected events and record histories.

``crmsync rejected list|show|replay`` and ``crmsync logs`` read what the console
indexed (services/console), so a script sees exactly what the pages show. The
console is found at ``CRMSYNC_CONSOLE_URL``, else at ``services.console.http``; the
CLI shows the admin token when the config names one (replays need it), else the
console's read token.
"""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import urlencode

from services.cli.admin_client import listener_url
from services.core.config import Settings
from services.core.http import TRANSIENT, client
from services.core.settings_base import MissingSecretError

CONSOLE_URL_ENV: Final = "CRMSYNC_CONSOLE_URL"


def console_url(settings: Settings) -> str:
    return listener_url(CONSOLE_URL_ENV, settings.services.console.http)


def console_call(
    settings: Settings,
    method: str,
    path: str,
    *,
    query: dict[str, Any] | None = None,
    form: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """(status, body); status 0 when the console did not answer."""
    token = _token(settings)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    wanted = {k: v for k, v in (query or {}).items() if v is not None}
    url = f"{console_url(settings)}/api{path}" + (f"?{urlencode(wanted)}" if wanted else "")
    try:
        with client(timeout_s=60, headers=headers) as http:
            response = http.request(method, url, data=form)
    except TRANSIENT as exc:
        reason = str(exc) or type(exc).__name__
        return 0, {"error": f"console not reachable at {console_url(settings)}: {reason}"}
    try:
        body = json.loads(response.content) if response.content else {}
    except ValueError:
        body = {"error": response.text[:200]}
    return response.status_code, body


def _token(settings: Settings) -> str | None:
    """The admin token when this shell has it (replays need it), else the read token;
    MissingSecretError when the config names tokens and the shell has neither."""
    refs = [
        ref
        for ref in (settings.services.ingest.admin_token, settings.services.console.read_token)
        if ref is not None
    ]
    missing: MissingSecretError | None = None
    for ref in refs:
        try:
            return ref.resolve()
        except MissingSecretError as exc:
            missing = missing or exc
    if missing is not None:
        raise missing
    return None
