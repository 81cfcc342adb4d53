"""Webhook sender verification shared by connectors: bearer, HMAC, Standard Webhooks.

Every comparison is constant-time (``hmac.compare_digest``) so response timing says
nothing about how much of a guess was right. Signed timestamps are bounded to a
tolerance window so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime

from services.core.bearer import bearer_matches, same
from services.core.sources.common import (
    BearerAuth,
    HmacSha256Auth,
    NoAuth,
    StandardWebhooksAuth,
    WebhookAuth,
)
from services.core.standard_webhooks import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
    signing_key,
)
from services.ingest.connectors.base import AuthError, InboundRequest

MILLIS_THRESHOLD = 100_000_000_000


def header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise AuthError(f"missing {name} header")
    return value


def check_timestamp(value: str, *, now: datetime, tolerance_seconds: int) -> None:
    """Accept Unix seconds or milliseconds within ``tolerance_seconds`` of now."""
    try:
        number = int(value.strip())
    except ValueError:
        raise AuthError("timestamp is not a Unix time") from None
    seconds = number / 1000 if number > MILLIS_THRESHOLD else float(number)
    if abs(now.timestamp() - seconds) > tolerance_seconds:
        raise AuthError("timestamp outside the allowed window (possible replay)")


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def verify_bearer(headers: Mapping[str, str], *, token: str) -> None:
    if not bearer_matches(header(headers, "Authorization"), token):
        raise AuthError("invalid bearer token")


def verify_hmac_sha256(
    request: InboundRequest, *, auth: HmacSha256Auth, secret: str, now: datetime
) -> None:
    signed = request.body
    if auth.timestamp_header is not None:
        timestamp = header(request.headers, auth.timestamp_header)
        check_timestamp(timestamp, now=now, tolerance_seconds=auth.tolerance_seconds)
        # The timestamp is part of what is signed, so it cannot be swapped for a fresh one.
        signed = timestamp.encode() + b"." + request.body
    presented = header(request.headers, auth.signature_header).strip().removeprefix("sha256=")
    expected = hmac_sha256(secret.encode(), signed).hex()
    if not same(presented.lower(), expected):
        raise AuthError(f"invalid signature in {auth.signature_header}")


def verify_standard_webhooks(
    request: InboundRequest, *, key: bytes, tolerance_seconds: int, now: datetime
) -> None:
    """Standard Webhooks: HMAC-SHA256 over ``id.timestamp.body``, any ``v1,`` signature."""
    message_id = header(request.headers, ID_HEADER)
    timestamp = header(request.headers, TIMESTAMP_HEADER)
    check_timestamp(timestamp, now=now, tolerance_seconds=tolerance_seconds)
    expected = signature(key, message_id=message_id, timestamp=timestamp, body=request.body)
    presented = header(request.headers, SIGNATURE_HEADER).split()
    # Several signatures may be present while a secret is rotated; one must match.
    # Every candidate is compared, so timing does not reveal which one did.
    matches = [
        same(signature.encode(), expected)
        for version, _, signature in (p.partition(",") for p in presented)
        if version == "v1"
    ]
    if not any(matches):
        raise AuthError("invalid signature in webhook-signature")


class Authenticator:
    """A source's configured generic scheme, with its secret resolved once."""

    def __init__(self, auth: WebhookAuth) -> None:
        self._auth = auth
        self._secret = ""
        self._key = b""
        if isinstance(auth, BearerAuth):
            self._secret = auth.token.resolve()
        elif isinstance(auth, HmacSha256Auth):
            self._secret = auth.secret.resolve()
        elif isinstance(auth, StandardWebhooksAuth):
            self._key = signing_key(auth.secret.resolve())

    def verify(self, request: InboundRequest, *, now: datetime) -> None:
        auth = self._auth
        if isinstance(auth, NoAuth):
            return
        if isinstance(auth, BearerAuth):
            verify_bearer(request.headers, token=self._secret)
        elif isinstance(auth, HmacSha256Auth):
            verify_hmac_sha256(request, auth=auth, secret=self._secret, now=now)
        else:
            verify_standard_webhooks(
                request, key=self._key, tolerance_seconds=auth.tolerance_seconds, now=now
            )
