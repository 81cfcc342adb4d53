"""Salesforce as a destination: profiles written to records with sObject Collections.

Documented behaviour followed (developer.salesforce.com, REST API Developer Guide:
"Upsert Records Using sObject Collections", "Update Records Using sObject
Collections", "Delete Records Using sObject Collections", "Call Options Header",
"Status Codes and Error Responses"; Change Data Capture Developer Guide,
"ChangeEventHeader Fields"):

- Upsert: ``PATCH /services/data/vXX.X/composite/sobjects/<sobject>/<external id
  field>`` with ``{"allOrNone": false, "records": [{"attributes": {"type":
  <sobject>}, <external id field>: <value>, <field>: <value>, ...}]}``, up to 200
  records of that one object, no ``Id``. Salesforce creates the record whose external
  id matches none and updates the one it matches, so a chunk sent twice changes the
  same records. The answer lists an UpsertResult per record, in request order:
  ``{id, success, errors: [{statusCode, message, fields}], created}``.
- A profile carrying ``crm:<source>:<record id>`` (``source`` the crmsync source
  reading this org) is updated by Id instead: ``PATCH .../composite/sobjects`` with
  ``{"allOrNone": false, "records": [{"attributes": {"type"}, "id", ...}]}``;
  SaveResults ``{id, success, errors}`` in order.
- Erased: ``DELETE .../composite/sobjects?ids=<id>,...&allOrNone=false`` (up to 200,
  to the recycle bin); DeleteResults in order. A profile without a record id cannot
  be erased this way and is refused for an operator. ``ENTITY_IS_DELETED`` means the
  record is gone already: delivered.
- Answers: a request that is not well formed is a 400 ``[{message, errorCode}]`` and
  refuses every change it carried (the delivery loop sends them again one by one); a
  well-formed one is a 200 whose failed records alone are refused. 401 renews the
  OAuth token once (``OAuthSession``, the Salesforce source's own), then is an outage,
  as is 403; 403 ``REQUEST_LIMIT_EXCEEDED`` (the org's API limit) is throttling
  (``is_throttled``, the source's own), retried with 429 and 5xx by ``ApiClient``.
- ``Sforce-Call-Options: client=<client_name>`` on every request. Change Data Capture
  fills a change event's ``ChangeEventHeader.changeOrigin`` for API writes as
  ``com/salesforce/api/<api>/<version>;client=<client id>``, the client id being the
  one the Call Options header set ("Use this field to detect whether your app
  initiated the change"): the Salesforce source drops the events of these writes by
  that client name (``change_events.own_client``).

What the documentation leaves open, and what this module does:

- A cleared attribute is left out (Salesforce keeps its value) unless
  ``send_clears``, which sends null, the JSON way to clear a field.
- The status of a record that failed inside a 200 answer: refused with 400, what the
  single-record resource answers for the same error, and the record's errors.
- A profile with several emails is matched by the first its identities list; a
  consent is a checkbox field, true when opted in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from services.core.api_client import ApiError, ApiUnavailable, Credentials
from services.core.destinations.salesforce import MAX_COLLECTION, SalesforceDestination
from services.core.sources.salesforce import TOKEN_PATH
from services.ingest.connectors.salesforce.oauth import OAuthSession
from services.ingest.connectors.salesforce.pull import is_throttled
from services.outbound.destinations.base import (
    RECORD_REFUSED,
    ApiConnection,
    Delivered,
    Refusal,
    refusals,
)
from services.outbound.destinations.profiles import RecordWrite, batches, fold_records
from services.outbound.outgoing import OutgoingChange

ALREADY_DELETED: Final = "ENTITY_IS_DELETED"


def failure(result: Any) -> str | None:
    """A failed result's errors, as the refusal's answer; None when it succeeded."""
    if isinstance(result, dict) and result.get("success") is True:
        return None
    errors = result.get("errors") if isinstance(result, dict) else None
    return orjson.dumps(errors if errors is not None else result).decode()[:300]


def credentials(settings: SalesforceDestination) -> Credentials | None:
    """The Salesforce source's OAuth session, when configured (else the static token)."""
    if settings.oauth is None:
        return None
    return OAuthSession(
        settings=settings.oauth,
        token_url=settings.oauth.token_url or f"{settings.api.base_url.rstrip('/')}{TOKEN_PATH}",
        timeout_seconds=settings.api.timeout_seconds,
    )


class SalesforceRecords:
    def __init__(self, name: str, settings: SalesforceDestination) -> None:
        self.name = name
        self.batch_size = settings.batch_size
        self._settings = settings
        self._collections = f"/services/data/v{settings.api_version}/composite/sobjects"
        self._headers = {"Sforce-Call-Options": f"client={settings.client_name}"}
        self._api = ApiConnection(
            name, settings.api, is_throttled=is_throttled, credentials=credentials(settings)
        )

    async def open(self) -> None:
        await self._api.open()

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        delivered = Delivered()
        updates: list[RecordWrite] = []
        upserts: list[RecordWrite] = []
        erasures: list[RecordWrite] = []
        for record in fold_records(
            chunk, source=self._settings.source, send_clears=self._settings.send_clears
        ):
            if record.erase and record.record_id is not None:
                erasures.append(record)
            elif record.erase:
                delivered.refused += self._unsendable(
                    record, "the profile has no Salesforce record id: delete it in Salesforce"
                )
            elif not record.values:
                continue  # nothing for Salesforce: delivered
            elif record.record_id is not None:
                updates.append(record)
            elif self._external_id(record) is not None:
                upserts.append(record)
            else:
                delivered.refused += self._unsendable(
                    record,
                    f"the profile has no Salesforce record id or "
                    f"{self._settings.external_id_value} to match",
                )
        for batch in batches(updates, MAX_COLLECTION):
            body = {"allOrNone": False, "records": [self._update_body(r) for r in batch]}
            await self._write("PATCH", self._collections, batch, delivered, body=body)
        upsert_path = (
            f"{self._collections}/{self._settings.sobject}/{self._settings.external_id_field}"
        )
        for batch in batches(upserts, MAX_COLLECTION):
            body = {"allOrNone": False, "records": [self._upsert_body(r) for r in batch]}
            await self._write("PATCH", upsert_path, batch, delivered, body=body)
        for batch in batches(erasures, MAX_COLLECTION):
            ids = ",".join(r.record_id or "" for r in batch)
            await self._write(
                "DELETE",
                self._collections,
                batch,
                delivered,
                params={"ids": ids, "allOrNone": "false"},
            )
        return delivered

    @staticmethod
    def _unsendable(record: RecordWrite, why: str) -> list[Refusal]:
        return [Refusal(change, None, why) for change in record.changes]

    def _external_id(self, record: RecordWrite) -> str | None:
        if self._settings.external_id_value == "profile_id":
            return str(record.profile_id)
        return record.email

    def _update_body(self, record: RecordWrite) -> dict[str, Any]:
        return {
            "attributes": {"type": self._settings.sobject},
            "id": record.record_id,
            **record.values,
        }

    def _upsert_body(self, record: RecordWrite) -> dict[str, Any]:
        return {
            "attributes": {"type": self._settings.sobject},
            **record.values,
            self._settings.external_id_field: self._external_id(record),
        }

    async def _write(
        self,
        method: str,
        path: str,
        records: Sequence[RecordWrite],
        delivered: Delivered,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> None:
        try:
            response = await self._api.client.request(
                method, path, json_body=body, params=params, headers=self._headers
            )
        except ApiUnavailable:
            raise  # not taken: the loop sends the chunk again
        except ApiError as exc:
            if exc.path == TOKEN_PATH:
                # The token endpoint refused crmsync's app: every change would meet that.
                raise ApiUnavailable(
                    status=exc.status, path=exc.path, detail=f"credentials refused: {exc.detail}"
                ) from exc
            delivered.refused += refusals(exc, [c for r in records for c in r.changes])
            return
        results = response.json()
        if not isinstance(results, list) or len(results) != len(records):
            # Not the documented answer: the records' fate is unknown, so send again.
            raise ApiUnavailable(
                status=response.status, path=path, detail="results do not match the records"
            )
        for record, result in zip(records, results, strict=True):
            problem = failure(result)
            if problem is not None and not (method == "DELETE" and ALREADY_DELETED in problem):
                delivered.refused += [Refusal(c, RECORD_REFUSED, problem) for c in record.changes]
            elif method != "DELETE" and result.get("id"):
                delivered.assigned[record.profile_id] = str(result["id"])

    async def close(self) -> None:
        await self._api.close()
