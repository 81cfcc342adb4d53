"""``--json`` on the CLI's read commands and long work: accepted everywhere it is
documented, and what ``config validate --json`` prints for a good and a bad config."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli.exit_codes import DONE, USAGE
from services.cli.main import build_parser
from tests.support.cli import config_file, crmsync

pytestmark = pytest.mark.unit

WITH_JSON = [
    ["config", "validate"],
    ["status"],
    ["fullsync", "status", "demo"],
    ["fullsync", "start", "demo"],
    ["fullsync", "start", "demo", "--wait"],
    ["import", "csv", "demo", "export.csv"],
    ["profile", "get", "--email", "ada@x.io"],
    ["profile", "get", "--id", "demo:1"],
    ["destination", "preview", "cdp", "--limit", "1"],
    ["destination", "push", "cdp", "--wait"],
    ["rejected", "list"],
    ["rejected", "show", "7"],
    ["logs", "ada@x.io"],
]


@pytest.mark.parametrize("command", WITH_JSON, ids=" ".join)
def test_json_is_accepted_and_off_unless_asked(command: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args([*command, "--json"]).json is True
    assert parser.parse_args(command).json is False


def test_a_valid_config_lists_its_sources_and_destinations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(
        tmp_path,
        "destinations:\n"
        "  hook:\n"
        "    kind: webhook\n"
        "    api: {base_url: 'http://127.0.0.1:9/hook'}\n"
        "    secret: {env: CLI_TEST_HOOK_SECRET}\n",
    )
    ran = crmsync(capsys, "--config", str(config), "config", "validate", "--json")
    assert ran.code == DONE, ran.err
    assert ran.json() == {
        "config": str(config),
        "valid": True,
        "sources": ["demo"],
        "destinations": ["hook"],
    }
    human = crmsync(capsys, "--config", str(config), "config", "validate")
    assert human.out == f"{config}: valid (sources: demo; destinations: hook)\n"


def test_an_invalid_config_lists_every_problem_with_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "crmsync.yaml"
    config.write_text(
        "kafka: {}\n"
        "store: {kind: sqlite}\n"
        "sources:\n"
        "  demo:\n"
        "    kind: generic_webhook\n"
        "    auth: {kind: none}\n"
        "    mappin: {}\n"
    )
    ran = crmsync(capsys, "--config", str(config), "config", "validate", "--json")
    assert ran.code == USAGE
    shown = ran.json()
    assert shown["config"] == str(config)
    assert shown["valid"] is False
    assert {"location": "kafka.bootstrap_servers", "line": 1, "message": "Field required"} in (
        shown["errors"]
    )
    assert {
        "location": "sources.demo.mappin",
        "line": 7,
        "message": "unknown setting (check the spelling)",
    } in shown["errors"]
    assert ran.err == ""
    # Without --json the same problems go to stderr, one a line.
    human = crmsync(capsys, "--config", str(config), "config", "validate")
    assert human.code == USAGE and human.out == ""
    assert "sources.demo.mappin (line 7): unknown setting" in human.err


def test_a_missing_config_is_invalid_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    ran = crmsync(capsys, "--config", str(missing), "config", "validate", "--json")
    assert ran.code == USAGE
    assert ran.json()["valid"] is False
    assert ran.json()["errors"][0]["message"].startswith("cannot read")
