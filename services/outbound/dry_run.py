"""A dry run of a destination: the requests it would send, recorded instead of sent.

``crmsync destination preview`` opens a destination inside ``recording()``: its API
connection then sends nothing and fetches no token (the config's secrets must still
resolve, as for the service), and
every request is kept as the vendor would have received it, secrets masked (headers
and fields that name a token, API key, secret, password or signature). Each request is
answered 200 with an empty JSON object; a destination whose next request depends on
the vendor's answer (a search before a create) stops there, and the preview says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import orjson

from services.core.http import USER_AGENT

SECRET_NAME: Final = re.compile(
    r"authorization|token|secret|password|signature|cookie|api[-_]?key|private[-_]?key", re.I
)
SECRET_ELEMENT: Final = re.compile(
    r"(<(?P<tag>[\w:.-]*(?:Password|Token|Secret)[\w:.-]*)(?:\s[^>]*)?>)[^<]*(</(?P=tag)>)", re.I
)
MASK: Final = "***"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: str


@dataclass
class Recorder:
    requests: list[RecordedRequest] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(
            RecordedRequest(
                method=request.method,
                url=str(request.url),
                headers=masked_headers(request.headers),
                body=shown_body(request.content, request.headers.get("content-type", "")),
            )
        )
        return httpx.Response(200, json={}, request=request)

    def session(self, timeout_s: float) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.MockTransport(self.handle),
            headers={"User-Agent": USER_AGENT},
            timeout=timeout_s,
        )


RECORDER: ContextVar[Recorder | None] = ContextVar("crmsync_dry_run", default=None)


@contextmanager
def recording() -> Iterator[Recorder]:
    recorder = Recorder()
    token = RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        RECORDER.reset(token)


def masked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name: MASK if SECRET_NAME.search(name) else value
        for name, value in headers.items()
        if name.lower() not in ("host", "content-length", "accept-encoding", "connection")
    }


def shown_body(content: bytes, content_type: str) -> str:
    if not content:
        return ""
    text = content.decode("utf-8", errors="replace")
    if "json" in content_type:
        try:
            return orjson.dumps(_masked(orjson.loads(content)), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            return text
    if "x-www-form-urlencoded" in content_type:
        return MASK  # a token request: credentials and nothing else
    return SECRET_ELEMENT.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if SECRET_NAME.search(str(k)) else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value
