"""Standard Webhooks 1.0 (standardwebhooks.com): the signature, both ways.

A message is signed with HMAC-SHA256 over ``<webhook-id>.<webhook-timestamp>.<body>``,
keyed by the base64 bytes of a ``whsec_...`` secret, and sent as ``v1,<base64>`` in
the ``webhook-signature`` header. Ingest checks it on generic webhooks it receives
(services/ingest/auth.py); the outbound service signs what it sends to a webhook
destination.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

ID_HEADER: Final = "webhook-id"
TIMESTAMP_HEADER: Final = "webhook-timestamp"
SIGNATURE_HEADER: Final = "webhook-signature"
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (the scheme's prefix, not a secret)


def signing_key(secret: str) -> bytes:
    """The signing key from a ``whsec_``-prefixed, base64-encoded secret."""
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error as exc:
        raise ValueError("Standard Webhooks secret is not base64 after 'whsec_'") from exc


def signature(key: bytes, *, message_id: str, timestamp: str, body: bytes) -> bytes:
    """The base64 HMAC-SHA256 of the signed content (without the ``v1,`` version)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())


def signed_headers(key: bytes, *, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a message sent at ``timestamp`` (Unix seconds)."""
    stamp = str(timestamp)
    value = signature(key, message_id=message_id, timestamp=stamp, body=body).decode()
    return {ID_HEADER: message_id, TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: f"v1,{value}"}
