"""A Schema Registry with the Confluent API, through confluent-kafka's own client.

When ``kafka.schema_registry`` is configured, each service registers the schemas it
holds at start-up (``register_schemas``, part of getting Kafka ready) under the
subjects of the topics they travel on (the TopicNameStrategy: ``<topic>-value``), and
from then on writes values in the Confluent wire format with the ids the registry
gave. The registry checks each new version against its subject's compatibility level
(its own default unless the operator sets one): a schema it refuses stops the service
with the registry's reason. A reader that meets an id it does not know asks the
registry for it (``SchemaRegistry.schema_json``), retrying a registry that is down for
about 20 s; after that the message is rejected with that reason. A service's own
schemas are registered before it reads anything, so only data of another version
needs the registry while a service runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from services.core.config import SchemaRegistrySettings
from services.core.kafka import TopicNames
from services.core.retry import RetryLater, RetryPolicy, logged
from services.core.serde import DecodeError, RegisteredSchema, SchemaCatalog

log = logging.getLogger(__name__)

# A reader waits this long at most for a registry that is down before the message it
# cannot decode is rejected (with the reason; it can be replayed).
LOOKUP_RETRY: Final = RetryPolicy(initial_s=0.2, max_s=5.0, attempts=8)
TRANSIENT_STATUS: Final = frozenset({429, 500, 502, 503, 504})


class SchemaRejected(RuntimeError):
    """The registry refused a schema (incompatible with its subject, or invalid)."""


class RegistryUnavailable(RuntimeError):
    """The registry did not answer, or answered that it is failing."""


def subjects_by_schema(topics: TopicNames) -> dict[str, list[str]]:
    """Each crmsync schema's full name, with the subjects it is registered under."""
    on = {
        "crmsync.ContactChange": [topics.changes, topics.fullsync],
        "crmsync.ProfileUpdate": [topics.profile_updates],
        "crmsync.SyncControl": [topics.barrier],
        "crmsync.RejectedEvent": [topics.rejected],
        "crmsync.AuditEvent": [topics.audit],
        "crmsync.ProfileChanged": [topics.profile_changes],
        "crmsync.ConnectorState": [topics.connector_state],
    }
    return {name: [f"{topic}-value" for topic in names] for name, names in on.items()}


class SchemaRegistry:
    """confluent-kafka's client (imported here only: its modules take some 18 MiB,
    which a deployment without a registry does not load)."""

    def __init__(
        self, settings: SchemaRegistrySettings, *, lookup_retry: RetryPolicy = LOOKUP_RETRY
    ) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self._lookup_retry = lookup_retry
        conf: dict[str, Any] = {
            "url": settings.url,
            "timeout": settings.timeout_s,
            # Retries are crmsync's one retry policy's job.
            "max.retries": 0,
        }
        if settings.basic_auth is not None:
            conf["basic.auth.credentials.source"] = "USER_INFO"
            conf["basic.auth.user.info"] = settings.basic_auth.resolve()
        self._client = SchemaRegistryClient(conf)
        self.url = settings.url

    def register(self, subject: str, schema: RegisteredSchema) -> int:
        """The id of ``schema`` under ``subject``, registered if it is new there."""
        from confluent_kafka.schema_registry import Schema

        try:
            return self._client.register_schema(subject, Schema(schema.schema_json, "AVRO"))
        except _client_failures() as exc:
            passing = _may_pass(exc)
            if passing is not None:
                raise RegistryUnavailable(f"{self.url}: {passing}") from exc
            raise SchemaRejected(
                f"the schema registry refused {schema.full_name} under {subject}: {_answer(exc)}"
            ) from exc

    def schema_json(self, schema_id: int) -> str | None:
        """The schema with registry id ``schema_id`` (None: the registry has none),
        retried while the registry is down; a DecodeError when it stays down, so that
        the message is rejected with that reason (and can be replayed)."""
        try:
            for attempt in self._lookup_retry.retrying(
                on=RetryLater, before_sleep=logged(log, "schema registry lookup failed")
            ):
                with attempt:
                    return self._fetch(schema_id)
        except RetryLater as exc:
            raise DecodeError(
                f"schema id {schema_id} not found: the schema registry at {self.url} "
                f"did not answer ({exc.reason})"
            ) from exc
        raise AssertionError("the retry loop ends by returning or raising")

    def _fetch(self, schema_id: int) -> str | None:
        try:
            return self._client.get_schema(schema_id).schema_str
        except _client_failures() as exc:
            if getattr(exc, "http_status_code", None) == 404:
                return None
            passing = _may_pass(exc)
            if passing is not None:
                raise RetryLater(passing) from exc
            raise DecodeError(
                f"schema id {schema_id}: the schema registry answered {_answer(exc)}"
            ) from exc


def _client_failures() -> tuple[type[Exception], ...]:
    """What confluent-kafka's registry client raises: the registry's error answer, or
    no answer (its HTTP library's transport errors)."""
    import httpx2
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    return (SchemaRegistryError, httpx2.TransportError)


def _may_pass(failure: Exception) -> str | None:
    """Why a retry may succeed (no answer, or a registry that says it is failing), or
    None when the answer stands."""
    status = getattr(failure, "http_status_code", None)
    if status is None:
        return type(failure).__name__
    return f"HTTP {status}" if status in TRANSIENT_STATUS else None


def _answer(failure: Exception) -> str:
    message = getattr(failure, "error_message", str(failure))
    return f"{message} (HTTP {getattr(failure, 'http_status_code', '?')})"


def register_schemas(
    registry: SchemaRegistry, catalog: SchemaCatalog, topics: TopicNames
) -> Mapping[bytes, int]:
    """Register every schema of ``catalog`` under its subjects, and have the catalog
    write with the ids from now on; returns them by schema fingerprint."""
    subjects = subjects_by_schema(topics)
    ids: dict[bytes, int] = {}
    for schema in catalog.schemas():
        for subject in subjects.get(schema.full_name, []):
            # The same schema under several subjects may get one id or several
            # (registries differ): the first is the one written, any one reads.
            ids.setdefault(schema.fingerprint, registry.register(subject, schema))
    catalog.use_registry(ids, registry.schema_json)
    log.info("schemas registered registry=%s ids=%s", registry.url, sorted(set(ids.values())))
    return ids
