"""Structured JSON logs with personal data and secrets kept out.

Every record is rendered once, then scrubbed: email addresses become a short keyed
hash tag (the same address always gives the same tag, so an operator can still follow
one contact through the logs; the key, from ``CRMSYNC_PII_SALT``, stops anyone from
reversing tags by hashing a list of addresses) and any secret value this process
resolved is replaced by ``***``. Scrubbing the rendered text, rather than trusting
each call site, means a forgotten ``%s`` of a record cannot leak an address.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import sys
import threading
from datetime import UTC, datetime
from typing import Final

EMAIL_PATTERN: Final = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
LOG_FORMAT_ENV: Final = "CRMSYNC_LOG_FORMAT"
LOG_LEVEL_ENV: Final = "CRMSYNC_LOG_LEVEL"
PII_SALT_ENV: Final = "CRMSYNC_PII_SALT"

_secret_values: set[str] = set()
_secrets_lock = threading.Lock()


def remember_secret(value: str) -> None:
    """Make sure ``value`` never appears in a log line of this process."""
    if len(value) >= 4:  # shorter values would blank out ordinary words
        with _secrets_lock:
            _secret_values.add(value)


def email_tag(email: str) -> str:
    salt = os.environ.get(PII_SALT_ENV, "").encode()
    digest = hmac.new(salt, email.strip().lower().encode(), hashlib.sha256).hexdigest()
    return f"email#{digest[:12]}"


def scrub(text: str) -> str:
    text = EMAIL_PATTERN.sub(lambda match: email_tag(match.group()), text)
    with _secrets_lock:
        secrets = list(_secret_values)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, *, service: str, worker: int | None = None) -> None:
        super().__init__()
        self._service = service
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class ScrubbingTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure_logging(*, service: str, level: str | None = None, worker: int | None = None) -> None:
    """JSON lines on stderr by default; ``CRMSYNC_LOG_FORMAT=text`` for humans.

    ``worker``: this process is one of several workers of the service writing to one
    log, and each line names it."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get(LOG_FORMAT_ENV, "json") == "text":
        who = service if worker is None else f"{service} w{worker}"
        handler.setFormatter(
            ScrubbingTextFormatter(f"%(asctime)s {who} %(levelname)s %(name)s: %(message)s")
        )
    else:
        handler.setFormatter(JsonFormatter(service=service, worker=worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get(LOG_LEVEL_ENV, "INFO"))
    # aiohttp's access log would print every webhook; metrics cover that.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # httpx logs every request's URL at INFO: a query string may carry a key (some
    # CRMs take API tokens there), and metrics count the calls.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
