"""Webhook sender verification: bearer tokens and HMAC-SHA256 signatures.

Every comparison is constant-time (``hmac.compare_digest``) so response timing says
nothing about how much of a guess was right. Signed timestamps are bounded to a
tolerance window so a captured request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime

from services.core.config import BearerAuth, HmacSha256Auth, NoAuth
from services.ingest.connectors.base import AuthError


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise AuthError(f"missing {name} header")
    return value


def verify_bearer(*, headers: Mapping[str, str], token: str) -> None:
    presented = _header(headers, "Authorization")
    scheme, _, credential = presented.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        credential.strip().encode(), token.encode()
    ):
        raise AuthError("invalid bearer token")


def verify_hmac_sha256(
    *, headers: Mapping[str, str], body: bytes, auth: HmacSha256Auth, secret: str, now: datetime
) -> None:
    signed = body
    if auth.timestamp_header is not None:
        timestamp = _header(headers, auth.timestamp_header)
        check_timestamp(timestamp, now=now, tolerance_seconds=auth.tolerance_seconds)
        # The timestamp is part of what is signed, so it cannot be swapped for a fresh one.
        signed = timestamp.encode() + b"." + body
    presented = _header(headers, auth.signature_header).strip()
    presented = presented.removeprefix("sha256=")
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(presented.lower().encode(), expected.encode()):
        raise AuthError(f"invalid signature in {auth.signature_header}")


def check_timestamp(value: str, *, now: datetime, tolerance_seconds: int) -> None:
    """Accept Unix seconds or milliseconds within ``tolerance_seconds`` of now."""
    try:
        number = int(value.strip())
    except ValueError:
        raise AuthError("timestamp is not a Unix time") from None
    seconds = number / 1000 if number > 100_000_000_000 else float(number)
    if abs(now.timestamp() - seconds) > tolerance_seconds:
        raise AuthError("timestamp outside the allowed window (possible replay)")


class Authenticator:
    """The configured scheme of one source, with its secret resolved once."""

    def __init__(self, auth: NoAuth | BearerAuth | HmacSha256Auth) -> None:
        self._auth = auth
        self._secret = (
            auth.token.resolve()
            if isinstance(auth, BearerAuth)
            else auth.secret.resolve()
            if isinstance(auth, HmacSha256Auth)
            else ""
        )

    def verify(self, *, headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        auth = self._auth
        if isinstance(auth, BearerAuth):
            verify_bearer(headers=headers, token=self._secret)
        elif isinstance(auth, HmacSha256Auth):
            verify_hmac_sha256(headers=headers, body=body, auth=auth, secret=self._secret, now=now)
