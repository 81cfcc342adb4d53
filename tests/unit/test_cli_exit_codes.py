"""``crmsync`` exits with the same code for the same failure, whatever the command:
1 refused or failed, 2 bad usage, 3 a service (ingest, the console, Kafka) not there."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.cli import fullsync_command
from services.cli.exit_codes import DONE, FAILED, UNREACHABLE, USAGE, kafka_unreachable
from services.cli.main import run
from services.core.config import Settings
from services.ingest.admin import fullsync_json
from services.ingest.state import FullSyncState, SyncStatus
from tests.support.cli import Ran, closed_url, config_file, crmsync, ingest_admin

pytestmark = pytest.mark.unit

ADMIN_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["fullsync", "start", "demo"],
    ["fullsync", "start", "demo", "--wait", "--json"],
    ["fullsync", "status", "demo"],
    ["fullsync", "cancel", "demo"],
    ["source", "pause", "demo"],
    ["source", "resume", "demo"],
]
AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def sync(status: SyncStatus, done: int, *, reason: str | None = None) -> dict[str, Any]:
    """The sync as ingest's admin API shows it."""
    return fullsync_json(
        FullSyncState(
            sync_id="demo-1",
            status=status,
            origin="FULL_SYNC",
            owner="ingest",
            started_at=AT,
            updated_at=AT,
            records_done=done,
            records_total=300,
            reason=reason,
        )
    )


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=" ".join)
def test_ingest_not_reachable_is_3(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CRMSYNC_INGEST_URL", closed_url())
    ran = crmsync(capsys, "--config", str(config_file(tmp_path)), *command)
    assert ran.code == UNREACHABLE, ran.err
    assert "ingest answered 0: ingest not reachable" in ran.err
    assert ran.out == ""


@pytest.mark.parametrize("command", [["rejected", "list"], ["logs", "ada@x.io", "--json"]])
def test_the_console_not_reachable_is_3(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CRMSYNC_CONSOLE_URL", closed_url())
    ran = crmsync(capsys, "--config", str(config_file(tmp_path)), *command)
    assert ran.code == UNREACHABLE, ran.err


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ((503, {"error": "Kafka unavailable; try again"}), UNREACHABLE),
        ((503, {"error": "starting up"}), UNREACHABLE),
        ((404, {"error": "unknown source 'demo'"}), FAILED),
        ((409, {"error": "a full sync of 'demo' is running"}), FAILED),
        ((401, {"error": "invalid or missing admin bearer token"}), FAILED),
    ],
)
def test_an_answer_refusing_is_1_and_one_saying_unavailable_is_3(
    answer: tuple[int, dict[str, Any]],
    code: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with ingest_admin({("POST", "/fullsync/demo"): [answer]}) as ingest:
        monkeypatch.setenv("CRMSYNC_INGEST_URL", ingest.url)
        ran = crmsync(capsys, "--config", str(config_file(tmp_path)), "fullsync", "start", "demo")
    assert ran.code == code
    assert answer[1]["error"] in ran.err


@pytest.mark.parametrize(
    ("end", "code"),
    [(SyncStatus.COMPLETED, DONE), (SyncStatus.FAILED, FAILED), (SyncStatus.CANCELLED, FAILED)],
)
def test_a_followed_full_sync_exits_0_only_if_it_completed(
    end: SyncStatus,
    code: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(fullsync_command, "POLL_S", 0.01)
    answers = {
        ("POST", "/fullsync/demo"): [(202, sync(SyncStatus.RUNNING, 0))],
        ("GET", "/fullsync/demo"): [
            (200, sync(SyncStatus.RUNNING, 100)),
            (200, sync(SyncStatus.RUNNING, 200)),
            (200, sync(end, 300, reason=None if end is SyncStatus.COMPLETED else "why")),
        ],
    }
    config = str(config_file(tmp_path))

    def followed(*flags: str) -> Ran:
        with ingest_admin(answers) as ingest:
            monkeypatch.setenv("CRMSYNC_INGEST_URL", ingest.url)
            return crmsync(capsys, "--config", config, "fullsync", "start", "demo", *flags)

    plain = followed("--wait")
    as_json = followed("--wait", "--json")
    assert plain.code == as_json.code == code
    # Not a terminal: one plain line per poll, the last one the sync's end, said once.
    lines = plain.out.splitlines()
    assert lines[0] == "started demo-1"
    assert lines[1:3] == ["demo-1 RUNNING 100/300", "demo-1 RUNNING 200/300"]
    assert lines[3].startswith(f"demo-1 {end.value} 300/300")
    assert len(lines) == 4
    # --json: stdout is the one JSON object, the words went to stderr.
    assert as_json.json()["status"] == end.value
    assert as_json.json()["records_done"] == 300
    assert "started demo-1" in as_json.err and "RUNNING 200/300" in as_json.err


def test_a_kafka_error_is_3_when_the_cluster_did_not_answer_and_1_when_it_refused() -> None:
    assert kafka_unreachable(KafkaException(KafkaError(KafkaError._TRANSPORT)))
    assert kafka_unreachable(KafkaException(KafkaError(KafkaError._TIMED_OUT)))
    assert kafka_unreachable(KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN)))
    assert not kafka_unreachable(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert not kafka_unreachable(KafkaException("no KafkaError in it"))


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (KafkaError._ALL_BROKERS_DOWN, UNREACHABLE),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, FAILED),
    ],
)
def test_a_command_failing_on_kafka_exits_with_the_code_for_it(
    error: int, code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(_settings: Settings, _args: argparse.Namespace) -> int:
        raise KafkaException(KafkaError(error))

    args = argparse.Namespace(
        config=str(config_file(tmp_path)), reads_config_itself=False, handler=handler
    )
    assert run(args) == code
    assert "Kafka" in capsys.readouterr().err


def test_an_invalid_config_is_2_for_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kafka: {}\nstore: {kind: sqlite}\n")
    for command in (["status"], ["fullsync", "status", "demo"], ["topics", "create"]):
        ran = crmsync(capsys, "--config", str(broken), *command)
        assert ran.code == USAGE
        assert "kafka.bootstrap_servers (line 1): Field required" in ran.err


def test_a_profile_named_wrongly_is_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_file(tmp_path)
    for command in (["get"], ["erase"], ["history"]):
        ran = crmsync(capsys, "--config", str(config), "profile", *command, "--id", "no-colon")
        assert ran.code == USAGE, command
        assert "--id" in ran.err
