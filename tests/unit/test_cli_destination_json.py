"""``crmsync destination preview|push --json``: the same facts as the words, as JSON on
stdout, with secrets masked and the words moved to stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli.destination_command import push
from services.cli.exit_codes import DONE, FAILED
from services.cli.preview_command import preview
from services.outbound.dry_run import MASK
from tests.unit.test_destination_preview import settings

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-value"


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREVIEW_TEST_TOKEN", SECRET)


def test_a_preview_is_a_list_of_each_profiles_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert preview(settings(tmp_path), "cdp", limit=2, email=None, as_json=True) == DONE
    out = capsys.readouterr().out
    assert SECRET not in out
    shown = json.loads(out)
    assert [p["profile_id"] for p in shown] == [1, 2]
    assert [p["skipped"] for p in shown] == [None, None]
    (request,) = shown[0]["requests"]
    assert request["method"] == "POST"
    assert request["url"].endswith("/public/v1/records/profiles/upsert-batch")
    assert json.loads(request["body"]) == {
        "records": [{"email": "ada@x.io", "first_name": "Ada"}],
        "matchKey": "email",
    }


def test_a_soap_preview_masks_the_password_and_says_why_a_profile_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert preview(settings(tmp_path), "s360", limit=3, email=None, as_json=True) == DONE
    out = capsys.readouterr().out
    assert SECRET not in out
    shown = json.loads(out)
    assert len(shown) == 3
    assert any(f">{MASK}</" in r["body"] for p in shown for r in p["requests"])
    nobody = shown[2]
    assert nobody["requests"] == []
    assert "no S-360 contact number nor email" in nobody["stopped"]


def test_nothing_to_preview_is_an_empty_list_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    found = preview(settings(tmp_path), "cdp", limit=1, email="no@x.io", as_json=True)
    assert found == FAILED
    assert json.loads(capsys.readouterr().out) == []


def test_a_push_prints_its_lines_or_one_json_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configured = settings(tmp_path)
    assert push(configured, "cdp", batch=1, restart=False, wait=False) == DONE
    words = capsys.readouterr()
    lines = words.out.splitlines()
    assert lines[0].startswith("cdp: push ") and lines[0].endswith(" of 3 profiles started")
    assert lines[-1] == "cdp: 3 of 3 profiles queued; the writer relays them to the destination"

    assert push(configured, "cdp", batch=1, restart=True, wait=False, as_json=True) == DONE
    captured = capsys.readouterr()
    shown = json.loads(captured.out)
    assert shown["destination"] == "cdp"
    assert (shown["pushed"], shown["total"], shown["mapping_version"]) == (3, 3, 1)
    assert shown["finished_at"] is not None
    assert "changes_waiting" not in shown  # only --wait looks at the backlog
    assert f"push {shown['run_id']} of 3 profiles started" in captured.err

    # Nothing left to push: the finished run, said as JSON too.
    assert push(configured, "cdp", batch=1, restart=False, wait=False, as_json=True) == DONE
    again = capsys.readouterr()
    assert json.loads(again.out)["run_id"] == shown["run_id"]
    assert "every profile was pushed" in again.err
