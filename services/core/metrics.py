"""The Prometheus metrics every crmsync service exposes on /metrics.

One catalogue, so that dashboards and alert rules (deploy/) can rely on the names.
Label values are bounded: sources come from the config and reasons are short codes,
never free text or record data.

When several processes serve one service (ingest or mapper ``workers``), the launcher
sets ``PROMETHEUS_MULTIPROC_DIR``: every process writes its samples there and any of
them serves the combined figures; each gauge says how its per-process values combine.
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.registry import REGISTRY

MULTIPROCESS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

EVENTS_RECEIVED: Final = Counter(
    "crmsync_events_received_total", "Changes accepted into Kafka", ["source", "origin"]
)
EVENTS_REJECTED: Final = Counter(
    "crmsync_events_rejected_total",
    "Inputs rejected, by stage and reason code",
    ["stage", "source", "reason"],
)
ECHOES_DROPPED: Final = Counter(
    "crmsync_echoes_dropped_total",
    "Changes a source reported that were crmsync's own writes there, recognised by the "
    "vendor's change-source marker and dropped",
    ["source"],
)
WEBHOOK_REQUESTS: Final = Counter(
    "crmsync_webhook_requests_total", "Webhook requests by answer", ["source", "status"]
)
WEBHOOK_SECONDS: Final = Histogram(
    "crmsync_webhook_request_seconds",
    "Webhook request time, body read to answer",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
PROFILE_UPDATES: Final = Counter(
    "crmsync_profile_updates_total", "ProfileUpdates emitted by the mapper", ["source"]
)
MAPPER_DROPS: Final = Counter(
    "crmsync_mapper_drops_total",
    "Attributes or records the rules left out (unmatched, ownership, blank, stale, invalid)",
    ["source", "reason"],
)
FIELD_REJECTIONS: Final = Counter(
    "crmsync_field_rejections_total",
    "Values a rule refused and left out under on_invalid: drop_field, the rest of the "
    "change applied (a consent as consent:<subscription>)",
    ["source", "attribute"],
)
MAPPER_HELD: Final = Gauge(
    "crmsync_mapper_held_changes",
    "Real-time changes held behind a running full sync or a pause, by this mapper instance",
    ["source"],
    multiprocess_mode="livesum",
)
DESTINATION_PAUSED: Final = Gauge(
    "crmsync_destination_paused",
    "1 while an operator has the destination paused (its changes wait in Kafka)",
    ["destination"],
    multiprocess_mode="livemax",
)
SOURCE_PAUSED: Final = Gauge(
    "crmsync_source_paused",
    "1 while an operator has the source paused (its changes queue until resumed)",
    ["source"],
    multiprocess_mode="livemax",
)
MAPPER_BATCHES: Final = Histogram(
    "crmsync_mapper_batch_seconds", "Time to map and commit one transaction of changes"
)
MAPPER_ABORTS: Final = Counter(
    "crmsync_mapper_aborted_transactions_total",
    "Transactions aborted and consumed again (a Kafka failure, never a bad input)",
)
LOOP_STALLED: Final = Gauge(
    "crmsync_loop_stalled",
    "1 while a service's stream loop has made no progress for longer than its limit",
    ["service"],
    # live: a worker that died stalled must not hold it at 1 after its restart.
    multiprocess_mode="livemax",
)
WRITER_DROPS: Final = Counter(
    "crmsync_writer_drops_total",
    "Updates or attributes the store left out (conflict policy, consent source, erased)",
    ["source", "reason"],
)
STORE_UNAVAILABLE: Final = Gauge(
    "crmsync_store_unavailable",
    "1 while the writer cannot reach its store and has paused consumption",
)
PROFILE_MERGES: Final = Counter(
    "crmsync_profile_merges_total", "Profiles merged because one change joined them"
)
RECORDS_WRITTEN: Final = Counter(
    "crmsync_records_written_total", "Profile updates applied to the store", ["source"]
)
PROFILE_CHANGES_RELAYED: Final = Counter(
    "crmsync_profile_changes_relayed_total",
    "ProfileChanged events put on the profile-changes topic from the store's outbox",
)
OUTBOX_LAG: Final = Gauge(
    "crmsync_outbox_lag_seconds",
    "Seconds since the writer last emptied the store's outbox, while a relay could not (0: empty)",
    multiprocess_mode="livemax",
)
STORE_BATCHES: Final = Histogram(
    "crmsync_store_batch_seconds", "Time to apply and commit one batch", buckets=LATENCY_BUCKETS
)
SYNC_LAG: Final = Histogram(
    "crmsync_sync_lag_seconds",
    "From receipt by ingest to the store commit",
    ["source"],
    buckets=LATENCY_BUCKETS,
)
LAST_SUCCESSFUL_SYNC: Final = Gauge(
    "crmsync_last_successful_sync_timestamp_seconds",
    "When a change from the source last reached the store",
    ["source"],
    multiprocess_mode="max",
)
CONSUMER_LAG: Final = Gauge(
    "crmsync_consumer_lag_messages",
    "Messages not yet consumed, per partition",
    ["group", "topic", "partition"],
    multiprocess_mode="livesum",
)
API_REQUESTS: Final = Counter(
    "crmsync_api_requests_total", "Requests to CRM APIs by HTTP status", ["source", "status"]
)
API_RETRIES: Final = Counter(
    "crmsync_api_retries_total", "CRM API requests retried, by reason", ["source", "reason"]
)
POLLS: Final = Counter(
    "crmsync_polls_total", "Poll runs by outcome (ok, failed)", ["source", "outcome"]
)
POLL_FAILURES_IN_A_ROW: Final = Gauge(
    "crmsync_poll_consecutive_failures",
    "Poll runs failed since the last success",
    ["source"],
    multiprocess_mode="max",
)
LAST_SUCCESSFUL_POLL: Final = Gauge(
    "crmsync_last_successful_poll_timestamp_seconds",
    "When a poll last completed",
    ["source"],
    multiprocess_mode="max",
)
FULLSYNC_RECORDS: Final = Gauge(
    "crmsync_fullsync_records_done",
    "Records written by the running full sync",
    ["source"],
    multiprocess_mode="max",
)
FULLSYNC_RECORDS_TOTAL: Final = Gauge(
    "crmsync_fullsync_records_total",
    "Records the running full sync expects",
    ["source"],
    multiprocess_mode="max",
)
FULLSYNC_RUNS: Final = Counter(
    "crmsync_fullsync_runs_total", "Full syncs ended, by outcome", ["source", "outcome"]
)


def scrape_registry() -> CollectorRegistry:
    """The registry /metrics serves: this process's, or the sum over all processes."""
    if not os.environ.get(MULTIPROCESS_DIR_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


# --- outbound -----------------------------------------------------------------------
DESTINATION_SENT: Final = Counter(
    "crmsync_destination_sent_total",
    "Profile changes a destination accepted",
    ["destination"],
)
DESTINATION_SKIPPED: Final = Counter(
    "crmsync_destination_skipped_total",
    "Profile changes not sent to a destination: from its own system, or nothing it maps",
    ["destination", "why"],
)
DESTINATION_RETRIES: Final = Counter(
    "crmsync_destination_retries_total",
    "Deliveries to a destination retried after it did not take them (down, throttled)",
    ["destination"],
)
DESTINATION_DEAD_LETTERED: Final = Counter(
    "crmsync_destination_dead_lettered_total",
    "Profile changes a destination refused, sent to rejected with its answer",
    ["destination"],
)
DESTINATION_LINKED: Final = Counter(
    "crmsync_destination_ids_linked_total",
    "Ids a destination gave profiles crmsync created there, linked back as identities",
    ["destination"],
)
DESTINATION_UNAVAILABLE: Final = Gauge(
    "crmsync_destination_unavailable",
    "1 while a destination does not take deliveries and its changes wait in Kafka",
    ["destination"],
    multiprocess_mode="livemax",
)
DESTINATION_LAG: Final = Histogram(
    "crmsync_destination_lag_seconds",
    "From a profile change's commit in the store to the destination's acknowledgement",
    ["destination"],
    buckets=LATENCY_BUCKETS,
)
NOTIFICATIONS_SENT: Final = Counter(
    "crmsync_notifications_sent_total",
    "Notification messages by channel and outcome (sent, refused, gave_up, dropped, failed)",
    ["channel", "outcome"],
)
NOTIFICATIONS_DROPPED: Final = Counter(
    "crmsync_notifications_dropped_total",
    "Incidents and resolutions the notifier dropped, oldest first, because its queue was full",
)
