"""The Salesforce connector: outbound messages and change events (push), SOQL queries (pull).

Documented behaviour followed (Salesforce developer documentation):

- SOAP API Developer Guide, "Understanding Outbound Messaging", "Understanding
  Notifications", "Understanding the Outbound Messaging WSDL": a SOAP 1.1 POST whose
  body is ``notifications`` (namespace ``http://soap.sforce.com/2005/09/outbound``):
  ``OrganizationId``, ``ActionId``, ``SessionId`` (nillable), ``EnterpriseUrl``,
  ``PartnerUrl`` and up to 100 ``Notification`` elements, each an ``Id`` (the
  notification's id, the same on every redelivery) and an ``sObject`` whose
  ``xsi:type`` names the object (``sf:Contact``) and whose children are the fields the
  outbound message selected. The listener answers ``notificationsResponse`` with
  ``<Ack>true</Ack>``; anything else and Salesforce retries for up to 24 hours, out of
  order, and "only the latest data" of a record is sent. The messages carry no
  signature (see ``OutboundMessages`` for how the sender is proven).
- Change Data Capture Developer Guide, "Change Event Message Structure",
  "ChangeEventHeader Fields", "Get Compound Fields in Change Events", "Gap Events",
  "Overflow Events": every event has a ``ChangeEventHeader`` (entityName, recordIds,
  changeType CREATE / UPDATE / DELETE / UNDELETE / GAP_* , changedFields, nulledFields,
  diffFields, transactionKey, sequenceNumber, commitTimestamp in Unix milliseconds,
  commitNumber). Events reach crmsync through a relay (e.g. a Pub/Sub API subscriber)
  that posts them as JSON; see ``ChangeEvents``.
- REST API Developer Guide, "Query" / "Query More Results" / "QueryAll": ``GET
  /services/data/vXX.X/query?q=<SOQL>`` answers ``{totalSize, done, nextRecordsUrl,
  records}``; the next batch is fetched from ``nextRecordsUrl`` until ``done``.
  "Query Options Header": ``Sforce-Query-Options: batchSize=N`` (200 to 2,000, no
  guarantee). SOQL and SOSL Reference, "Date Formats and Date Literals": dateTime
  literals are ``YYYY-MM-DDThh:mm:ssZ``, unquoted. "Status Codes and Error Responses":
  errors are ``[{"message", "errorCode"}]``; 401 ``INVALID_SESSION_ID`` when the
  session expired, 403 ``REQUEST_LIMIT_EXCEEDED`` when the org's API limit is spent
  (``is_throttled``, so ``ApiClient`` backs off instead of failing).
- Salesforce Help, "OAuth 2.0 Client Credentials Flow for Server-to-Server
  Integration" and "OAuth 2.0 Refresh Token Flow for Renewed Sessions": a form POST to
  ``/services/oauth2/token`` answers ``{access_token, instance_url, token_type, ...}``
  with no lifetime (sessions end by the org's timeout), so a token is renewed when the
  API answers 401 (``OAuthSession``); errors are ``{"error", "error_description"}``.

Steps of a webhook request (one URL takes both push kinds; the Content-Type says which):

1. ``authenticate``: an outbound message must pass the configured shared token and
   client-certificate checks and come from the configured OrganizationId; a change
   event batch must pass the relay's scheme (bearer, HMAC-SHA256, Standard Webhooks).
2. ``parse``: every Notification, or every record id of every change event, becomes one
   ContactChange; ``answer`` gives Salesforce its SOAP acknowledgement, the relay JSON.
   A refused message (401, 400) is not acknowledged, so Salesforce retries it for up to
   24 hours: its fix (config, or the message) is visible in the rejected topic.

Steps of a pull: ``SELECT <fields> FROM <object> [WHERE LastModifiedDate >= <since>]
ORDER BY LastModifiedDate, Id`` through ``queryAll`` (deleted records in the recycle
bin become deletions) or ``query``, then ``nextRecordsUrl`` batches until ``done``.
Every batch advances the watermark. A query locator dies with its session and after
15 minutes idle, so the checkpoint also keeps the last record delivered: a resumed pull
whose locator is gone queries again from that record, never skipping one.
"""

from __future__ import annotations

from services.core.sources.salesforce import TOKEN_PATH, SalesforceSource
from services.ingest.connectors.base import SourceConnectors
from services.ingest.connectors.salesforce.events import ChangeEvents
from services.ingest.connectors.salesforce.oauth import OAuthSession
from services.ingest.connectors.salesforce.outbound import OutboundMessages
from services.ingest.connectors.salesforce.pull import SalesforcePullConnector, is_throttled
from services.ingest.connectors.salesforce.push import SalesforceWebhookConnector


def connectors(source: str, settings: SalesforceSource) -> SourceConnectors:
    outbound = (
        OutboundMessages(source=source, settings=settings.outbound_messages)
        if settings.outbound_messages is not None
        else None
    )
    events = (
        ChangeEvents(source=source, settings=settings.change_events)
        if settings.change_events is not None
        else None
    )
    webhook = None
    if outbound is not None or events is not None:
        webhook = SalesforceWebhookConnector(
            source=source, accepted=settings.accepted_objects, outbound=outbound, events=events
        )
    api = settings.api
    credentials = None
    if api is not None and settings.oauth is not None:
        credentials = OAuthSession(
            settings=settings.oauth,
            token_url=settings.oauth.token_url or f"{api.base_url.rstrip('/')}{TOKEN_PATH}",
            timeout_seconds=api.timeout_seconds,
        )
    return SourceConnectors(
        webhook=webhook,
        pull=SalesforcePullConnector(source=source, settings=settings) if api else None,
        api=api,
        poll=settings.poll if api else None,
        credentials=credentials,
        is_throttled=is_throttled,
    )
