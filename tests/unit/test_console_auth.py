"""Who may see and act in the console: tokens, signed sessions and CSRF tokens."""

from __future__ import annotations

import time

import pytest
from aiohttp.test_utils import make_mocked_request

from services.console.auth import COOKIE, Role, Tokens

pytestmark = pytest.mark.unit

TOKENS = Tokens(read="read-secret", admin="admin-secret")


def request(headers: dict[str, str] | None = None, cookie: str | None = None):  # type: ignore[no-untyped-def]
    all_headers = dict(headers or {})
    if cookie is not None:
        all_headers["Cookie"] = f"{COOKIE}={cookie}"
    return make_mocked_request("GET", "/", headers=all_headers)


def test_each_token_gives_its_role_and_nothing_else_gives_any() -> None:
    assert TOKENS.role_of_token("read-secret") is Role.READ
    assert TOKENS.role_of_token("admin-secret") is Role.ADMIN
    assert TOKENS.role_of_token("admin-secreT") is None
    assert TOKENS.role_of_token("") is None
    read = TOKENS.caller(request({"Authorization": "Bearer read-secret"}))
    assert read is not None and not read.admin
    admin = TOKENS.caller(request({"Authorization": "Bearer admin-secret"}))
    assert admin is not None and admin.admin
    assert TOKENS.caller(request({"Authorization": "Bearer nope"})) is None
    assert TOKENS.caller(request()) is None


def test_a_session_is_signed_by_its_role_token_and_expires() -> None:
    session = TOKENS.session(Role.ADMIN)
    caller = TOKENS.caller(request(cookie=session))
    assert caller is not None and caller.admin
    # Claiming another role, or a later expiry, breaks the signature.
    _role, expires, signature = session.split(".")
    assert TOKENS.caller(request(cookie=f"read.{expires}.{signature}")) is None
    assert TOKENS.caller(request(cookie=f"admin.{int(expires) + 1}.{signature}")) is None
    # Expired.
    old = TOKENS.session(Role.READ, now=time.time() - 13 * 3600)
    assert TOKENS.caller(request(cookie=old)) is None
    # Rotating the token ends the session.
    rotated = Tokens(read="read-secret", admin="new-admin-secret")
    assert rotated.caller(request(cookie=session)) is None
    assert TOKENS.caller(request(cookie="garbage")) is None


def test_a_signed_in_form_needs_its_csrf_token_and_a_bearer_caller_none() -> None:
    caller = TOKENS.caller(request(cookie=TOKENS.session(Role.ADMIN)))
    assert caller is not None
    assert TOKENS.csrf_matches(caller, TOKENS.csrf(caller))
    assert not TOKENS.csrf_matches(caller, "")
    assert not TOKENS.csrf_matches(caller, "0" * 64)
    bearer = TOKENS.caller(request({"Authorization": "Bearer admin-secret"}))
    assert bearer is not None and TOKENS.csrf_matches(bearer, "")


def test_without_any_token_the_console_is_closed() -> None:
    closed = Tokens(read=None, admin=None)
    assert not closed.configured
    assert closed.caller(request({"Authorization": "Bearer "})) is None
