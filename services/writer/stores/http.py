"""The HTTP store: profiles live in a CDP, written through its upsert API.

The API is docs/cdp-http-api.md. The CDP applies the profile model itself; this
store's job is delivery, effectively once:

1. Each ProfileUpdate becomes a change with an idempotency key derived from the
   change, so a redelivered or replayed change is answered from the CDP's ledger
   instead of being applied again.
2. Changes go in order, in batch requests of ``batch_size`` (the single endpoint for
   a batch of one).
3. A 429 or 5xx answer (or no answer) is retried, honouring Retry-After, up to
   ``max_attempts``; then the batch fails as transient and the writer retries it
   later, paused. Nothing was skipped.
4. Per change, a 4xx answer is a rejection whose reason is the CDP's response body.
   A replayed answer (from the ledger) is reported like the first: its merges and
   drops become audit events again. A batch replayed after a crash must repeat the
   events the crash may have lost; readers of the audit topic deduplicate them by
   event id.
5. The CDP cannot store Kafka positions with the data, so ``stored_offsets`` is
   empty: the writer resumes from Kafka's committed offsets, committed only after the
   CDP answered, and whatever it consumes again is deduplicated by step 1.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import httpx

from services.core.config import HttpStoreSettings
from services.core.contracts import Identity, ProfileUpdate
from services.core.http import TRANSIENT, client
from services.core.retry import RetryLater, RetryPolicy, logged, retry_after_seconds
from services.writer.profiles import Merge, update_problem
from services.writer.stores.base import (
    BatchReport,
    BeforeCommit,
    OutboxEntry,
    StoredProfile,
    StoreRejection,
    TopicPartitionKey,
    TransientStoreError,
)
from services.writer.stores.cdp_wire import (
    WireError,
    change_json,
    idempotency_key,
    profile_from_json,
)

log = logging.getLogger(__name__)

# The wait before the second try, and the longest wait: a batch must not hold the
# writer for long (it retries the whole batch later, paused, after max_attempts).
MAX_RETRY_AFTER_S: Final = 60.0
FIRST_BACKOFF_S: Final = 0.2
REASON_LIMIT: Final = 2_000


class HttpProfileStore:
    keeps_offsets = False

    def __init__(
        self,
        settings: HttpStoreSettings,
        *,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._policy = RetryPolicy(
            initial_s=FIRST_BACKOFF_S,
            max_s=MAX_RETRY_AFTER_S,
            attempts=settings.max_attempts,
            retry_after_cap_s=MAX_RETRY_AFTER_S,
        )
        self._client = client(
            base_url=settings.url.rstrip("/"),
            headers={"Authorization": f"Bearer {settings.token.resolve()}"},
            timeout_s=settings.timeout_s,
        )

    def migrate(self) -> None:
        """The CDP owns its schema; there is nothing to migrate here."""

    def pending_changes(self, limit: int) -> list[OutboxEntry]:
        """None: the CDP applies the profile model itself and tells no change back, so
        this store has no outbox (its profile changes are the CDP's to publish)."""
        return []

    def changes_relayed(self, up_to: int) -> None:
        """Nothing is ever pending."""

    def ping(self) -> None:
        self._request("GET", "/v1/profiles", params={"limit": 1})

    def stored_offsets(self, topic: str) -> dict[int, int]:
        # Step 5
        return {}

    def apply_batch(
        self,
        *,
        updates: Sequence[ProfileUpdate],
        next_offsets: Mapping[TopicPartitionKey, int],
        written_at: datetime,
        before_commit: BeforeCommit,
    ) -> BatchReport:
        report = BatchReport()
        sendable: list[tuple[int, ProfileUpdate]] = []
        for index, update in enumerate(updates):
            # What JSON or any store cannot carry (NaN, NUL) is refused before sending.
            problem = update_problem(update)
            if problem is None:
                sendable.append((index, update))
            else:
                report.rejections.append(StoreRejection(index, f"store refused: {problem}"))
        size = self._settings.batch_size
        for start in range(0, len(sendable), size):
            chunk = sendable[start : start + size]
            # Steps 1 and 2
            chunk_updates = [update for _index, update in chunk]
            results = (
                [self._single(chunk_updates[0])] if len(chunk) == 1 else self._batch(chunk_updates)
            )
            for (index, _update), (status, body) in zip(chunk, results, strict=True):
                self._record(report, index, status, body)
        report.rejections.sort(key=lambda rejection: rejection.index)
        before_commit(report)
        return report

    def _single(self, update: ProfileUpdate) -> tuple[int, Any]:
        response = self._request(
            "POST",
            "/v1/profiles/upsert",
            json=change_json(update),
            headers={"Idempotency-Key": idempotency_key(update)},
        )
        return response.status_code, _body(response)

    def _batch(self, chunk: Sequence[ProfileUpdate]) -> list[tuple[int, Any]]:
        items = [{"idempotency_key": idempotency_key(u), "change": change_json(u)} for u in chunk]
        response = self._request("POST", "/v1/profiles/batch", json={"changes": items})
        if response.status_code != 200:
            raise TransientStoreError(
                f"CDP refused a batch request ({response.status_code}): {_reason(response)}"
            )
        try:
            results = response.json()["results"]
            if len(results) != len(chunk):
                raise ValueError(f"{len(results)} results for {len(chunk)} changes")
            return [(int(r["status"]), r.get("body")) for r in results]
        except (ValueError, KeyError, TypeError) as exc:
            raise TransientStoreError(f"CDP batch answer not understood: {exc}") from exc

    @staticmethod
    def _record(report: BatchReport, index: int, status: int, body: Any) -> None:
        # Step 4
        if 400 <= status < 500:
            reason = json.dumps(body, ensure_ascii=False)[:REASON_LIMIT]
            report.rejections.append(StoreRejection(index, f"CDP answered {status}: {reason}"))
            return
        if status != 200 or not isinstance(body, dict):
            raise TransientStoreError(f"CDP answered {status} for one change")
        # A replay ("replayed": true) carries the first answer: reported again (step 4).
        for merge in body.get("merges", []):
            report.merges.append(
                (index, Merge(merge["merged_profile_id"], merge["into_profile_id"], ""))
            )
        for drop in body.get("drops", []):
            report.drops.append((index, drop["field"], drop["reason"]))
        if body.get("status") == "dropped":
            report.dropped_updates.append((index, body.get("reason") or "dropped"))

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The CDP's answer, after retrying 429, 5xx and transport errors (step 3)."""
        try:
            retrying = self._policy.retrying(
                sleep=self._sleep, before_sleep=logged(log, "CDP request failed")
            )
            for attempt in retrying:
                with attempt:
                    return self._attempt(method, path, **kwargs)
        except RetryLater as exc:
            raise TransientStoreError(
                f"CDP unavailable after {self._settings.max_attempts} tries: {exc.reason}"
            ) from exc
        raise AssertionError("the retry loop ends by returning or raising")

    def _attempt(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except TRANSIENT as exc:
            raise RetryLater(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryLater(
                f"{response.status_code}: {_reason(response)}",
                retry_after_s=retry_after_seconds(response.headers.get("Retry-After")),
            )
        if response.status_code == 401:
            raise TransientStoreError("CDP refused the token (401)")
        return response

    # --- reads ----------------------------------------------------------------------

    def find_profile(self, identity: Identity) -> StoredProfile | None:
        response = self._request(
            "GET", "/v1/profiles", params={"identity": f"{identity.kind}:{identity.value}"}
        )
        if response.status_code == 404:
            return None
        return self._profile(response.json())

    def all_profiles(self) -> list[StoredProfile]:
        profiles: list[StoredProfile] = []
        after: int | None = 0
        while after is not None:
            page = self._request(
                "GET", "/v1/profiles", params={"after": after, "limit": 500}
            ).json()
            profiles.extend(self._profile(p) for p in page["profiles"])
            after = page["next_after"]
        return profiles

    def profiles_by_mapping_version(self) -> dict[str, dict[int, int]]:
        counts: dict[str, dict[int, int]] = {}
        for profile in self.all_profiles():
            seen = {(a.source, a.mapping_version) for a in profile.attributes.values()}
            for source, version in seen:
                per_source = counts.setdefault(source, {})
                per_source[version] = per_source.get(version, 0) + 1
        return counts

    @staticmethod
    def _profile(body: Any) -> StoredProfile:
        try:
            return profile_from_json(body)
        except WireError as exc:
            raise TransientStoreError(f"CDP profile not understood: {exc}") from exc

    def close(self) -> None:
        self._client.close()


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:REASON_LIMIT]


def _reason(response: httpx.Response) -> str:
    return response.text[:REASON_LIMIT]
