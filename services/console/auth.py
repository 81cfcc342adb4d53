"""Who may see the console and who may act in it.

Two roles: ``read`` (every page, nothing that changes anything) with the console's
read token, and ``admin`` (pause, resume, full syncs, replays too) with ingest's
admin token. A caller shows a token as ``Authorization: Bearer`` (scripts, the CLI)
or signs in once on /login, which sets a session cookie: the role and an expiry,
signed with HMAC-SHA256 keyed by that role's token, so rotating a token ends its
sessions. The cookie is HttpOnly and SameSite=Strict; every form that acts also
carries a token derived from the session (CSRF), checked in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from aiohttp import web

from services.core.bearer import bearer_matches, same

COOKIE: Final = "crmsync_console"
SESSION_S: Final = 12 * 3600


class Role(StrEnum):
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True)
class Caller:
    role: Role
    session: str | None = None
    """The session cookie's value, for a caller signed in through /login."""

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN


class Tokens:
    def __init__(self, *, read: str | None, admin: str | None) -> None:
        self._tokens = {
            role: token for role, token in ((Role.READ, read), (Role.ADMIN, admin)) if token
        }

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def role_of_token(self, presented: str) -> Role | None:
        # Every configured token is compared, so the time taken says nothing of which.
        matched = [role for role, token in self._tokens.items() if same(presented, token)]
        return Role.ADMIN if Role.ADMIN in matched else (matched[0] if matched else None)

    def caller(self, request: web.Request) -> Caller | None:
        header = request.headers.get("Authorization", "")
        for role, token in self._tokens.items():
            if header and bearer_matches(header, token):
                return Caller(role)
        cookie = request.cookies.get(COOKIE)
        signed_in = self._session_role(cookie) if cookie else None
        return Caller(signed_in, session=cookie) if signed_in is not None else None

    def session(self, role: Role, *, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + SESSION_S)
        payload = f"{role.value}.{expires}"
        return f"{payload}.{self._sign(role, payload)}"

    def csrf(self, caller: Caller) -> str:
        if caller.session is None:
            return ""
        return self._sign(caller.role, f"csrf.{caller.session}")

    def csrf_matches(self, caller: Caller, presented: str) -> bool:
        # A bearer caller sends no cookie, so a forged cross-site form cannot act as it.
        return caller.session is None or same(presented, self.csrf(caller))

    def _session_role(self, cookie: str, *, now: float | None = None) -> Role | None:
        role_text, _, rest = cookie.partition(".")
        expires, _, signature = rest.partition(".")
        try:
            role = Role(role_text)
            expiry = int(expires)
        except ValueError:
            return None
        if role not in self._tokens:
            return None
        if not same(signature, self._sign(role, f"{role_text}.{expires}")):
            return None
        return role if expiry > (now if now is not None else time.time()) else None

    def _sign(self, role: Role, payload: str) -> str:
        key = self._tokens[role].encode()
        return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()
