"""crmsync's configuration: one YAML file, validated by pydantic at start-up.

The file's path comes from ``CRMSYNC_CONFIG`` (default ``crmsync.yaml``). Every
problem is reported with the file, the path inside it, the line and the reason, all
at once, so an operator fixes a config in one pass. Secrets are never values in the
YAML: they are ``SecretRef``s naming an environment variable or a file, resolved only
when a client is built, and never logged.

The whole configuration model but the sources' and the mapping's (``sources/``,
``mapping_settings.py``), so that a section of ``crmsync.yaml`` maps to one class here;
hence over 400 lines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    AfterValidator,
    Field,
    IPvAnyNetwork,
    ValidationError,
    field_validator,
    model_validator,
)

from services.core.destinations import DestinationSettings
from services.core.mapping_settings import ProfileSettings, check_profile
from services.core.settings_base import SecretRef, Strict
from services.core.sources.kinds import SourceKinds
from services.notify.settings import NotificationSettings

CONFIG_ENV: Final = "CRMSYNC_CONFIG"
DEFAULT_CONFIG_PATH: Final = "crmsync.yaml"

SOURCE_NAME_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Client properties whose values are credentials: they must come through `secrets`.
SECRET_PROPERTY_PATTERN: Final = re.compile(r"(password|secret|token|sasl\.jaas\.config)", re.I)


class TopicSettings(Strict):
    partitions: int = Field(default=6, ge=1, le=10_000)
    replication_factor: int = Field(default=1, ge=1, le=7)
    config: dict[str, str] = Field(default_factory=dict)


def _compacted(partitions: int) -> TopicSettings:
    return TopicSettings(partitions=partitions, config={"cleanup.policy": "compact"})


class TopicsSettings(Strict):
    prefix: str = Field(default="crmsync.", pattern=r"^[A-Za-z0-9._-]*$")
    changes: TopicSettings = TopicSettings()
    fullsync: TopicSettings = TopicSettings()
    barrier: TopicSettings = TopicSettings(partitions=1, config={"retention.ms": "-1"})
    profile_updates: TopicSettings = TopicSettings()
    rejected: TopicSettings = TopicSettings(partitions=3)
    audit: TopicSettings = TopicSettings(partitions=3)
    profile_changes: TopicSettings = TopicSettings()
    connector_state: TopicSettings = _compacted(1)
    schemas: TopicSettings = _compacted(1)
    mapper_state: TopicSettings = Field(
        default_factory=lambda: _compacted(6),
        description="the mapper's state changelog: compacted, one partition per changes "
        "partition (follows changes.partitions unless set)",
    )

    @model_validator(mode="before")
    @classmethod
    def _mapper_state_follows_changes(cls, data: Any) -> Any:
        if isinstance(data, dict) and "mapper_state" not in data:
            changes = data.get("changes")
            if isinstance(changes, dict):
                try:
                    changes = TopicSettings.model_validate(changes)
                except ValidationError:
                    return data  # reported where it is, by the field's own validation
            if isinstance(changes, TopicSettings):
                follows = _compacted(changes.partitions).model_copy(
                    update={"replication_factor": changes.replication_factor}
                )
                return {**data, "mapper_state": follows}
        return data

    @model_validator(mode="after")
    def _fullsync_matches_changes(self) -> TopicsSettings:
        if self.mapper_state.partitions != self.changes.partitions:
            raise ValueError(
                f"mapper_state.partitions ({self.mapper_state.partitions}) must equal "
                f"changes.partitions ({self.changes.partitions})"
            )
        # The barrier compares positions per partition, so a record must land on the
        # same partition number in both topics.
        if self.fullsync.partitions != self.changes.partitions:
            raise ValueError(
                f"fullsync.partitions ({self.fullsync.partitions}) must equal "
                f"changes.partitions ({self.changes.partitions})"
            )
        return self


ClientValue = str | int | float | bool


class SchemaRegistrySettings(Strict):
    """A Schema Registry with the Confluent API: every value crmsync writes is then in
    the Confluent wire format, its schema registered under ``<topic>-value``."""

    url: str = Field(
        pattern=r"^https?://", description="the registry's base URL, e.g. http://registry:8081"
    )
    basic_auth: SecretRef | None = Field(
        default=None, description="USER:PASSWORD for HTTP basic auth, as {env: VAR} or {file: PATH}"
    )
    timeout_s: float = Field(default=10.0, gt=0, le=300)


class KafkaSettings(Strict):
    bootstrap_servers: str = Field(min_length=1)
    client: dict[str, ClientValue] = Field(
        default_factory=dict,
        description="librdkafka properties passed through (security.protocol, sasl.*, ssl.*)",
    )
    secrets: dict[str, SecretRef] = Field(
        default_factory=dict, description="client properties whose values are secrets"
    )
    topics: TopicsSettings = TopicsSettings()
    schema_registry: SchemaRegistrySettings | None = Field(
        default=None,
        description="absent: values are Avro single-object encoded, schemas on the schemas "
        "topic (needs nothing else)",
    )

    @field_validator("client")
    @classmethod
    def _no_inline_secrets(cls, client: dict[str, ClientValue]) -> dict[str, ClientValue]:
        inline = sorted(k for k in client if SECRET_PROPERTY_PATTERN.search(k))
        if inline:
            raise ValueError(
                f"{', '.join(inline)} must not be written in the config; declare "
                "it under kafka.secrets as {env: VAR} or {file: PATH}"
            )
        return client


class SqliteStoreSettings(Strict):
    kind: Literal["sqlite"]
    path: Path = Path("var/crmsync.db")


class PostgresStoreSettings(Strict):
    kind: Literal["postgres"]
    dsn: str = Field(
        min_length=1,
        description="libpq connection string or URI without the password, e.g. "
        "postgresql://crmsync@db:5432/crmsync",
    )
    password: SecretRef | None = Field(default=None, description="{env: VAR} or {file: PATH}")
    connect_timeout_s: int = Field(default=5, ge=1, le=300)

    @field_validator("dsn")
    @classmethod
    def _no_inline_password(cls, dsn: str) -> str:
        if re.search(r"(?i)password\s*=|://[^/@:]+:[^/@]+@", dsn):
            raise ValueError(
                "the DSN must not hold the password; declare it as password: {env: VAR}"
            )
        return dsn


class HttpStoreSettings(Strict):
    """A CDP's profile upsert API (docs/cdp-http-api.md)."""

    kind: Literal["http"]
    url: str = Field(pattern=r"^https?://", description="base URL, e.g. https://cdp.example.com")
    token: SecretRef = Field(description="bearer token, {env: VAR} or {file: PATH}")
    batch_size: int = Field(default=500, ge=1, le=500, description="changes per batch request")
    timeout_s: float = Field(default=30.0, gt=0, le=300)
    max_attempts: int = Field(
        default=5, ge=1, le=20, description="tries per request on 429/5xx before the batch waits"
    )


StoreSettings = Annotated[
    SqliteStoreSettings | PostgresStoreSettings | HttpStoreSettings, Field(discriminator="kind")
]


class HttpListen(Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)

    @property
    def local_url(self) -> str:
        """Where a process on this host reaches the listener (a wildcard host on
        loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"


class IngestSettings(Strict):
    http: HttpListen = HttpListen(port=8080)
    admin: HttpListen = Field(
        default=HttpListen(port=8079),
        description="the operators' API (full syncs, status): keep it off the public "
        "network that CRMs reach the webhooks through",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="webhook-serving processes sharing the port (SO_REUSEPORT); one "
        "Python process uses one core, so set this to the cores ingest may use",
    )
    public_base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="the scheme and host CRMs use to reach ingest (behind a proxy); "
        "some CRMs sign the URL they called",
    )
    # IPv4Network or IPv6Network, whichever the CIDR is; host bits set (10.1.2.3/8) refused.
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="networks (CIDR) of the proxies in front of ingest: from these peers "
        "only, X-Forwarded-Proto and X-Forwarded-Host give the URL CRMs called (when "
        "public_base_url is not set)",
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    delivery_timeout_ms: int = Field(default=10_000, ge=100)
    retry_after_seconds: int = Field(default=5, ge=1)
    admin_token: SecretRef | None = Field(
        default=None, description="bearer token of the admin API (full syncs, status)"
    )
    run_pulls: bool = Field(
        default=True,
        description="run polls and full syncs here; set false on extra ingest instances "
        "that only take webhooks, so one instance owns each source's pulls",
    )


class MapperSettings(Strict):
    http: HttpListen = HttpListen(port=8081)
    data_dir: Path = Field(
        default=Path("var/mapper"),
        description="the local copy of the mapper's state (one RocksDB per partition); "
        "each instance needs its own; with workers > 1, worker i keeps its own under "
        "<data_dir>/w<i>",
    )
    instance_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="stable name of this instance, for its Kafka transactional id "
        "(default: host name and data_dir); a restarted instance must keep it; with "
        "workers > 1, worker i is <instance_id>-w<i>",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="mapper processes on this host, each a member of the mapper's "
        "consumer group with its own partitions, transactions and state; one Python "
        "process uses one core, so set this to the cores the mapper may use (at most "
        "the partitions of changes); the first starts, restarts and stops the others "
        "and serves health and the summed metrics for all",
    )
    batch_max_records: int = Field(
        default=2000,
        ge=1,
        le=20_000,
        description="messages a transaction maps, and held changes it releases, at most: "
        "a transaction must commit well within its 60 s timeout",
    )
    batch_max_wait_ms: int = Field(default=10, ge=0, le=10_000)


class WriterSettings(Strict):
    http: HttpListen = HttpListen(port=8082)
    read_token: SecretRef | None = Field(
        default=None, description="bearer token of the read API (GET /profiles)"
    )
    batch_max_records: int = Field(
        default=2000,
        ge=1,
        le=100_000,
        description="profile updates a store transaction applies at most: a batch's reads "
        "and commit weigh less per update in larger batches (PostgreSQL spent a third "
        "less CPU per update at 2,000 than at 500); below the limit a batch closes "
        "after batch_max_wait_ms",
    )
    batch_max_wait_ms: int = Field(default=100, ge=0)


class OutboundSettings(Strict):
    http: HttpListen = HttpListen(port=8083)
    batch_max_records: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="profile changes a destination's loop takes from Kafka at once",
    )
    batch_max_wait_ms: int = Field(default=200, ge=0, le=60_000)


class ConsoleSettings(Strict):
    http: HttpListen = Field(
        default=HttpListen(port=8084),
        description="the sync console (web pages and their JSON): operators only, like "
        "ingest's admin listener",
    )
    data_dir: Path = Field(
        default=Path("var/console"),
        description="the console's index of rejections, audit and profile changes (SQLite)",
    )
    retention_days: int = Field(
        default=14,
        ge=1,
        le=3650,
        description="days the index keeps rejections and record timelines (daily counts "
        "are kept for good)",
    )
    read_token: SecretRef | None = Field(
        default=None,
        description="token for the read-only pages; the admin token "
        "(services.ingest.admin_token) also allows the actions: pause, resume, full "
        "sync, replay",
    )
    ingest_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="ingest's admin listener as the console reaches it (default: "
        "services.ingest.admin)",
    )
    watch_seconds: float = Field(
        default=15.0,
        ge=0.5,
        le=3600,
        description="how often the console looks for incidents to notify",
    )


class ServicesSettings(Strict):
    ingest: IngestSettings = IngestSettings()
    mapper: MapperSettings = MapperSettings()
    writer: WriterSettings = WriterSettings()
    outbound: OutboundSettings = OutboundSettings()
    console: ConsoleSettings = ConsoleSettings()


SourceSettings = Annotated[SourceKinds, Field(discriminator="kind")]


def _check_source_name(name: str) -> str:
    if not SOURCE_NAME_PATTERN.match(name):
        raise ValueError(
            "a source name is lower-case letters, digits, '-' or '_', at most 63 "
            "characters (it appears in URLs and message keys)"
        )
    return name


SourceName = Annotated[str, AfterValidator(_check_source_name)]


class Settings(Strict):
    kafka: KafkaSettings
    store: StoreSettings
    services: ServicesSettings = ServicesSettings()
    sources: dict[SourceName, SourceSettings] = Field(default_factory=dict)
    destinations: dict[SourceName, DestinationSettings] = Field(default_factory=dict)
    profile: ProfileSettings = ProfileSettings()
    notifications: NotificationSettings = Field(
        default_factory=NotificationSettings,
        description="who is told of failing syncs, rejection spikes, full syncs and dead "
        "letters (docs/notifications.md); the console sends them",
    )

    @model_validator(mode="after")
    def _destination_sources_exist(self) -> Settings:
        for name, destination in self.destinations.items():
            if destination.source is not None and destination.source not in self.sources:
                raise ValueError(
                    f"destination {name!r} names source {destination.source!r}, "
                    "which is not configured"
                )
            if destination.send_if is not None and isinstance(self.store, HttpStoreSettings):
                raise ValueError(
                    f"destination {name!r} has send_if, which reads profiles from the "
                    "store: the http store cannot be read so; use sqlite or postgres"
                )
        return self


@dataclass(frozen=True)
class ConfigProblem:
    location: str
    line: int | None
    message: str

    def render(self, file: str) -> str:
        where = f"{file}: {self.location}" if self.location else file
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.message}"


class ConfigError(ValueError):
    """The configuration is unusable; ``str()`` lists every problem found."""

    def __init__(self, file: str, problems: Sequence[ConfigProblem]) -> None:
        self.file = file
        self.problems = list(problems)
        super().__init__("\n".join(p.render(file) for p in self.problems))


def config_path(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_settings(path: str | Path | None = None) -> Settings:
    file = config_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), [ConfigProblem("", None, f"cannot read: {exc}")]) from exc
    return parse_settings(text, file=str(file))


def parse_settings(text: str, *, file: str) -> Settings:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(file, [ConfigProblem("", line, f"not valid YAML: {exc}")]) from exc
    if not isinstance(data, dict):
        raise ConfigError(file, [ConfigProblem("", None, "the top level must be a mapping")])
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            located = _locate(root, error["loc"])
            problems.append(ConfigProblem(located.path, located.line, _message(error)))
        raise ConfigError(file, problems) from exc
    # Checks across sections: every source's mapping against the profile settings, the
    # mapper's workers against the partitions.
    across = check_profile(settings.profile, dict(settings.sources)) + _check_workers(settings)
    if across:
        raise ConfigError(
            file,
            [ConfigProblem(path, _locate(root, _loc(path)).line, text) for path, text in across],
        )
    return settings


def _check_workers(settings: Settings) -> list[tuple[str, str]]:
    workers = settings.services.mapper.workers
    partitions = settings.kafka.topics.changes.partitions
    if workers <= partitions:
        return []
    # The group gives each partition to one member: the extra workers would idle, and
    # the service would never report itself ready.
    return [
        (
            "services.mapper.workers",
            f"{workers} workers but changes has {partitions} partitions: a worker "
            "without a partition has nothing to do",
        )
    ]


def _loc(path: str) -> list[int | str]:
    """A dotted path with [index] parts as a pydantic-style location."""
    return [
        int(part[1:-1]) if part.startswith("[") else part
        for part in path.replace("[", ".[").split(".")
        if part
    ]


def _message(error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown setting (check the spelling)"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


@dataclass(frozen=True)
class _Located:
    path: str
    line: int | None


def _locate(root: yaml.Node | None, loc: Sequence[int | str]) -> _Located:
    """The dotted path and YAML line of a pydantic error location.

    pydantic's location also names the chosen member of a tagged union (the
    ``kind``) and marks bad mapping keys with ``[key]``; neither is in the YAML, so
    such items are left out: an item that is not in the YAML and not the last one
    (a missing setting is the last) is one of them.
    """
    parts: list[str] = []
    node = root
    line = root.start_mark.line + 1 if root is not None else None
    key_line = line
    for position, item in enumerate(loc):
        if item == "[key]":
            # A bad mapping key: point at the key itself.
            return _Located(_join(parts), key_line)
        child, child_key_line = _child(node, item)
        last = position == len(loc) - 1
        if child is None and (not last or _is_kind_of(node, item)):
            continue
        parts.append(f"[{item}]" if isinstance(item, int) else item)
        if child is not None:
            node, key_line = child, child_key_line or key_line
            line = child.start_mark.line + 1
        else:
            node = None
    return _Located(_join(parts), line)


def _is_kind_of(node: yaml.Node | None, item: int | str) -> bool:
    """Whether ``item`` is the ``kind`` of this mapping: a union tag, not a setting."""
    kind, _ = _child(node, "kind")
    return isinstance(kind, yaml.ScalarNode) and kind.value == item


def _child(node: yaml.Node | None, item: int | str) -> tuple[yaml.Node | None, int | None]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if getattr(key, "value", None) == item:
                return value, key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode) and isinstance(item, int) and item < len(node.value):
        return node.value[item], None
    return None, None


def _join(parts: list[str]) -> str:
    text = ""
    for part in parts:
        text += part if part.startswith("[") or not text else f".{part}"
    return text
