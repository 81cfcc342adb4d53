"""Constant-time checks of presented secrets, for every service that takes a token.

Comparisons use ``hmac.compare_digest`` so the time an answer takes says nothing
about how much of a secret was right.
"""

from __future__ import annotations

import hmac


def same(presented: str | bytes, expected: str | bytes) -> bool:
    """Constant-time equality of two secrets or signatures."""
    left = presented.encode() if isinstance(presented, str) else presented
    right = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(left, right)


def bearer_matches(authorization: str, token: str) -> bool:
    """Whether an Authorization header value is ``Bearer <token>``."""
    scheme, _, credential = authorization.partition(" ")
    return scheme.lower() == "bearer" and same(credential.strip(), token)
