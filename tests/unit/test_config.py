"""Config validation: every problem named with file, path, line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.config import ConfigError, load_settings, parse_settings
from services.core.settings_base import MissingSecretError, SecretRef
from services.core.sources.generic import GenericWebhookSource

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"

MINIMAL = """\
kafka:
  bootstrap_servers: 127.0.0.1:9092
store:
  kind: sqlite
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, file="crmsync.yaml")
    return str(caught.value).splitlines()


def test_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    assert isinstance(settings.sources["demo"], GenericWebhookSource)
    assert settings.kafka.topics.changes.partitions == settings.kafka.topics.fullsync.partitions


def test_minimal_config_gets_defaults() -> None:
    settings = parse_settings(MINIMAL, file="x.yaml")
    assert settings.services.ingest.http.port == 8080
    assert settings.kafka.topics.prefix == "crmsync."
    assert settings.kafka.topics.schemas.config == {"cleanup.policy": "compact"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kafka: {}\nstore: {kind: sqlite}\n",
            "crmsync.yaml: kafka.bootstrap_servers (line 1): Field required",
        ),
        (
            MINIMAL + "sources:\n  demo:\n    kind: generic_webhook\n    auth: {kind: none}\n"
            "    mapping: {email: email}\n    mappin: {}\n",
            "crmsync.yaml: sources.demo.mappin (line 10): unknown setting (check the spelling)",
        ),
        (
            MINIMAL
            + "sources:\n  Demo Source:\n    kind: generic_webhook\n    auth: {kind: none}\n",
            "crmsync.yaml: sources.Demo Source (line 6): a source name is lower-case letters",
        ),
        (
            MINIMAL + "sources:\n  demo:\n    kind: generic_webhook\n    auth: {kind: bearer}\n",
            "crmsync.yaml: sources.demo.auth.token (line 8): Field required",
        ),
        (
            MINIMAL + "sources:\n  demo:\n    kind: carrier_pigeon\n",
            "crmsync.yaml: sources.demo (line 7): Input tag 'carrier_pigeon' found using 'kind'",
        ),
        (
            MINIMAL.replace("kafka:\n", "kafka:\n  client: {sasl.password: hunter2}\n"),
            "crmsync.yaml: kafka.client (line 2): sasl.password must not be written in the config",
        ),
        (
            MINIMAL.replace("kafka:\n", "kafka:\n  topics: {changes: {partitions: 3}}\n"),
            "crmsync.yaml: kafka.topics (line 2): fullsync.partitions (6) must equal",
        ),
        (
            MINIMAL.replace("kind: sqlite", "kind: sqlite\n  path: [1, 2]"),
            "crmsync.yaml: store.path (line 5): Input is not a valid path",
        ),
        (
            MINIMAL + "services:\n  ingest:\n    http: {port: 99999}\n",
            "crmsync.yaml: services.ingest.http.port (line 7): Input should be less than or equal",
        ),
    ],
)
def test_errors_name_file_path_line_and_reason(text: str, expected: str) -> None:
    assert any(line.startswith(expected) for line in problems(text)), problems(text)


def test_all_problems_are_reported_at_once() -> None:
    text = MINIMAL + (
        "sources:\n  a:\n    kind: generic_webhook\n    auth: {kind: bearer}\n"
        "  b:\n    kind: generic_webhook\n    auth: {kind: none}\n    typo: 1\n"
    )
    found = problems(text)
    assert len(found) == 2
    assert found[0].startswith("crmsync.yaml: sources.a.auth.token")
    assert found[1].startswith("crmsync.yaml: sources.b.typo")


def test_invalid_yaml_names_the_line() -> None:
    assert problems("kafka: [\n  unclosed\nstore: x\n")[0].startswith("crmsync.yaml (line 3)")


def test_top_level_must_be_a_mapping() -> None:
    assert problems("- a\n- b\n") == ["crmsync.yaml: the top level must be a mapping"]


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")


def test_config_path_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL)
    monkeypatch.setenv("CRMSYNC_CONFIG", str(path))
    assert load_settings().kafka.bootstrap_servers == "127.0.0.1:9092"


def test_secret_from_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMSYNC_TEST_SECRET", "s3cret-value")
    assert SecretRef(env="CRMSYNC_TEST_SECRET").resolve() == "s3cret-value"
    secret_file = tmp_path / "token"
    secret_file.write_text("from-file\n")
    assert SecretRef(file=secret_file).resolve() == "from-file"
    with pytest.raises(MissingSecretError, match="CRMSYNC_NOT_SET"):
        SecretRef(env="CRMSYNC_NOT_SET").resolve()


def test_secret_names_exactly_one_place() -> None:
    text = MINIMAL + (
        "sources:\n  a:\n    kind: generic_webhook\n"
        "    auth: {kind: bearer, token: {env: A, file: /b}}\n"
    )
    assert "names exactly one of 'env' or 'file'" in problems(text)[0]


def test_kafka_secrets_are_references_not_values() -> None:
    text = MINIMAL.replace(
        "kafka:\n", "kafka:\n  secrets:\n    sasl.password: {env: KAFKA_PASSWORD}\n"
    )
    settings = parse_settings(text, file="x.yaml")
    assert settings.kafka.secrets["sasl.password"].env == "KAFKA_PASSWORD"


TWO_SOURCES = (
    MINIMAL
    + """\
sources:
  crm:
    kind: generic_webhook
    auth: {kind: none}
    mapping: {phone: phone, fn: first_name}
    clears: [CLEARED]
  shop:
    kind: generic_webhook
    auth: {kind: none}
    mapping: {phone: phone}
"""
)


def test_an_attribute_several_sources_map_needs_no_policy_but_none_of_them_owns_it() -> None:
    settings = parse_settings(TWO_SOURCES.replace("CLEARED", "first_name"), file="x.yaml")
    assert "phone" not in settings.profile.attributes
    (problem,) = problems(TWO_SOURCES.replace("CLEARED", "phone"))
    assert "sources.crm.clears" in problem
    assert "only an owner may clear an attribute" in problem


def test_the_mapper_state_changelog_follows_the_changes_topic() -> None:
    text = MINIMAL.replace(
        "  bootstrap_servers: 127.0.0.1:9092\n",
        "  bootstrap_servers: 127.0.0.1:9092\n  topics:\n"
        "    changes: {partitions: 12, replication_factor: 3}\n"
        "    fullsync: {partitions: 12, replication_factor: 3}\n",
    )
    state = parse_settings(text, file="x.yaml").kafka.topics.mapper_state
    assert (state.partitions, state.replication_factor) == (12, 3)
    assert state.config["cleanup.policy"] == "compact"
    mismatched = text.replace(
        "    fullsync: {partitions: 12, replication_factor: 3}\n",
        "    fullsync: {partitions: 12, replication_factor: 3}\n"
        "    mapper_state: {partitions: 4}\n",
    )
    assert any("must equal changes.partitions (12)" in line for line in problems(mismatched))


def test_a_schema_registry_is_an_http_url_with_its_credentials_referenced() -> None:
    text = MINIMAL.replace(
        "kafka:\n",
        "kafka:\n  schema_registry:\n    url: http://registry:8081\n"
        "    basic_auth: {env: REGISTRY_USER_INFO}\n",
    )
    registry = parse_settings(text, file="x.yaml").kafka.schema_registry
    assert registry is not None
    assert registry.url == "http://registry:8081"
    assert registry.basic_auth is not None and registry.basic_auth.env == "REGISTRY_USER_INFO"
    assert parse_settings(MINIMAL, file="x.yaml").kafka.schema_registry is None
    wrong_url = MINIMAL.replace("kafka:\n", "kafka:\n  schema_registry: {url: registry:8081}\n")
    assert any("kafka.schema_registry.url" in line for line in problems(wrong_url))
    inline = MINIMAL.replace(
        "kafka:\n", "kafka:\n  schema_registry: {url: 'http://r', basic_auth: 'user:pw'}\n"
    )
    assert any("kafka.schema_registry.basic_auth" in line for line in problems(inline))
