"""``crmsync destination preview``: per profile the requests a push would send, shown and
never sent, no credential fetched, secrets masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli.preview_command import preview
from services.core.config import Settings, parse_settings
from services.core.mapping_settings import ProfileSettings
from services.outbound.dry_run import MASK, shown_body
from services.writer.stores.sqlite import SqliteProfileStore
from tests.stores.changes import apply, update

pytestmark = pytest.mark.unit

# Hosts nothing answers on: a request that left the process would fail the test.
NOWHERE = "http://127.0.0.1:9"


def settings(tmp_path: Path) -> Settings:
    store = tmp_path / "profiles.db"
    text = f"""
kafka:
  bootstrap_servers: 127.0.0.1:9
store:
  kind: sqlite
  path: {store}
destinations:
  cdp:
    kind: cdp
    api: {{base_url: "{NOWHERE}/public/v1", token: {{env: PREVIEW_TEST_TOKEN}}}}
    match_key: email
    attributes: {{first_name: first_name}}
  sfdc:
    kind: salesforce
    api: {{base_url: "{NOWHERE}"}}
    oauth: {{client_id: crmsync-app, client_secret: {{env: PREVIEW_TEST_TOKEN}}}}
    attributes: {{first_name: FirstName, last_name: LastName}}
  s360:
    kind: s360
    api: {{base_url: "{NOWHERE}"}}
    username: CRMSYNC_WS
    password: {{env: PREVIEW_TEST_TOKEN}}
    attributes: {{first_name: firstName}}
"""
    seeded = SqliteProfileStore(store, profile=ProfileSettings())
    seeded.migrate()
    apply(
        seeded,
        [
            update("crm", "1", t=1, email="ada@x.io", attributes={"first_name": "Ada"}),
            update("crm", "2", t=1, email="bob@x.io", attributes={"first_name": "Bob"}),
            update("crm", "3", t=1, attributes={"first_name": "Nobody"}),
        ],
    )
    seeded.close()
    return parse_settings(text, file="crmsync.yaml")


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREVIEW_TEST_TOKEN", "s3cr3t-value")


def test_the_cdp_request_of_each_profile_is_shown_and_not_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert preview(settings(tmp_path), "cdp", limit=2, email=None) == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out
    blocks = out.split("== profile ")[1:]
    assert [b.splitlines()[0] for b in blocks] == ["1", "2"]
    first = blocks[0].splitlines()
    assert first[1] == f"POST {NOWHERE}/public/v1/records/profiles/upsert-batch"
    body = json.loads("\n".join(first[first.index("{") :]))
    assert body == {"records": [{"email": "ada@x.io", "first_name": "Ada"}], "matchKey": "email"}


def test_an_oauth_destination_fetches_no_token_and_one_profile_can_be_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert preview(settings(tmp_path), "sfdc", limit=5, email="BOB@x.io") == 0
    out = capsys.readouterr().out
    assert "oauth2/token" not in out and "s3cr3t" not in out
    assert out.count("== profile") == 1
    assert "composite/sobjects/Contact/Email" in out
    assert '"FirstName": "Bob"' in out


def test_a_soap_password_is_masked_and_a_profile_without_email_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert preview(settings(tmp_path), "s360", limit=3, email=None) == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out
    assert f">{MASK}</" in out
    assert out.count("== profile") == 3
    assert preview(settings(tmp_path), "nope", limit=1, email=None) == 1


def test_bodies_are_masked_where_they_name_secrets() -> None:
    body = b'{"client_secret": "x", "matchKey": "email", "a": [{"api_key": 1, "b": 2}]}'
    assert json.loads(shown_body(body, "application/json")) == {
        "client_secret": MASK,
        "matchKey": "email",
        "a": [{"api_key": MASK, "b": 2}],
    }
    form = b"grant_type=client_credentials&client_secret=x"
    assert shown_body(form, "application/x-www-form-urlencoded") == MASK
