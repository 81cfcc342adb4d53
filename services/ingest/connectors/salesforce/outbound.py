"""Salesforce outbound messages: SOAP notifications, proven by org, token or client
certificate, read without DTDs or entities, acknowledged with ``<Ack>true</Ack>``."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from services.core.bearer import same
from services.core.contracts import ContactChange, FieldValue, Operation, Origin
from services.core.sources.salesforce import (
    DEFAULT_FIELD_TYPES,
    FieldType,
    SalesforceOutboundMessages,
)
from services.ingest.connectors.base import (
    AuthError,
    InboundRequest,
    PayloadError,
)
from services.ingest.connectors.salesforce.times import header_value, salesforce_time
from services.ingest.fields import (
    flatten,
    record_identifier,
    scalar_or_list,
)

SOAP_ENVELOPE_NS: Final = "http://schemas.xmlsoap.org/soap/envelope/"
OUTBOUND_NS: Final = "http://soap.sforce.com/2005/09/outbound"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
MAX_NOTIFICATIONS: Final = 100  # "A single SOAP message can include up to 100 notifications"
MAX_ENVELOPE_BYTES: Final = 4 << 20
DECLARED_ENCODING: Final = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([^\"']+)[\"']")
ACK: Final = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
    b"<soapenv:Body>"
    b'<notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">'
    b"<Ack>true</Ack>"
    b"</notificationsResponse>"
    b"</soapenv:Body>"
    b"</soapenv:Envelope>"
)
BOOLEAN_TEXT: Final = {"true": True, "1": True, "false": False, "0": False}


def parse_xml(body: bytes) -> ET.Element:
    """A UTF-8 XML document without any DTD, parsed with the standard library.

    Entity expansion (billion laughs) and external entities both need a DTD; refusing
    any ``<!DOCTYPE`` / ``<!ENTITY`` before parsing removes both attacks. The text is
    checked as UTF-8 (what Salesforce sends) so no other encoding can hide a DTD.
    """
    if len(body) > MAX_ENVELOPE_BYTES:
        raise PayloadError("body", f"larger than {MAX_ENVELOPE_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("body", f"not UTF-8: {exc.reason}") from None
    declared = DECLARED_ENCODING.match(body)
    if declared is not None and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        raise PayloadError("body", "the XML declares an encoding other than UTF-8")
    upper = text.upper()
    if "<!DOCTYPE" in upper or "<!ENTITY" in upper:
        raise PayloadError("body", "DTDs and entity declarations are not accepted")
    try:
        return ET.fromstring(body)  # noqa: S314 - no DTD can reach the parser (above)
    except ET.ParseError as exc:
        raise PayloadError("body", f"not well-formed XML: {exc}") from None


def local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@dataclass(frozen=True)
class Envelope:
    organization_id: str
    carries_session: bool
    notifications: list[ET.Element]


def read_envelope(body: bytes) -> Envelope:
    root = parse_xml(body)
    if root.tag != f"{{{SOAP_ENVELOPE_NS}}}Envelope":
        raise PayloadError("Envelope", "not a SOAP 1.1 envelope")
    soap_body = root.find(f"{{{SOAP_ENVELOPE_NS}}}Body")
    if soap_body is None:
        raise PayloadError("Envelope.Body", "missing")
    notifications = soap_body.find(f"{{{OUTBOUND_NS}}}notifications")
    if notifications is None:
        raise PayloadError("Body.notifications", "missing: not an outbound message")
    organization = (notifications.findtext(f"{{{OUTBOUND_NS}}}OrganizationId") or "").strip()
    if not organization:
        raise PayloadError("notifications.OrganizationId", "missing")
    items = notifications.findall(f"{{{OUTBOUND_NS}}}Notification")
    if not items:
        raise PayloadError("notifications.Notification", "no notifications")
    if len(items) > MAX_NOTIFICATIONS:
        raise PayloadError(
            "notifications.Notification", f"more than {MAX_NOTIFICATIONS} notifications"
        )
    session = (notifications.findtext(f"{{{OUTBOUND_NS}}}SessionId") or "").strip()
    return Envelope(
        organization_id=organization, carries_session=bool(session), notifications=items
    )


def typed_text(text: str, *, kind: FieldType | None, where: str) -> FieldValue:
    """An XML text value read as the field's type (SOAP carries every value as text)."""
    if kind is None or kind == "string":
        return text
    text = text.strip()
    if text == "":
        return None
    if kind == "boolean":
        if text not in BOOLEAN_TEXT:
            raise PayloadError(where, f"expected true or false, got {text[:20]!r}")
        return BOOLEAN_TEXT[text]
    try:
        number: int | float = int(text) if kind == "int" else float(text)
    except ValueError:
        raise PayloadError(where, f"expected a number ({kind}), got {text[:20]!r}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise PayloadError(where, "expected a finite number")
    return scalar_or_list(number, where=where)


class OutboundMessages:
    """Outbound messages: who sent them, and their notifications as changes.

    They carry no signature. The sender is proven by every configured check:
    1. the shared token in the endpoint URL's query string (``?token=``), compared in
       constant time; the outbound message's endpoint URL is set in Setup, over HTTPS;
    2. the verdict header of a TLS-terminating proxy that verified the client
       certificate Salesforce presents (crmsync's HTTP server does not terminate TLS);
    3. always, the OrganizationId in the message against the configured org (the first
       15 characters: the 18-character form only adds a checksum). An org id is visible
       to every user of the org, hence checks 1 and 2.
    A message with a SessionId ('Send Session ID') is refused too: it would put a live
    API session into Kafka.
    A body that cannot be read is refused with 401 unless check 1 or 2 proved the
    sender; then ``parse`` answers 400 and the body is kept in the rejected topic.
    """

    def __init__(self, *, source: str, settings: SalesforceOutboundMessages) -> None:
        self.source = source
        self._organization = settings.organization_id[:15]
        self._token_param = settings.token_param
        self._token = settings.token.resolve() if settings.token is not None else None
        self._cert_header = settings.client_cert_header
        self._cert_value = settings.client_cert_value or ""
        self._types: dict[str, FieldType] = {**DEFAULT_FIELD_TYPES, **settings.field_types}

    def authenticate(self, request: InboundRequest) -> None:
        proven = self._shared_checks(request)
        try:
            envelope = read_envelope(request.body)
        except PayloadError as exc:
            if proven:
                return
            raise AuthError(f"cannot read the OrganizationId ({exc.problem})") from None
        if not same(envelope.organization_id[:15], self._organization):
            raise AuthError("OrganizationId is not the configured organization")
        if envelope.carries_session:
            # crmsync never calls back; a refused body would be kept in the rejected
            # topic with a live session in it. Refused before anything is kept.
            raise AuthError(
                "the message carries a SessionId: turn off 'Send Session ID' on the "
                "outbound message"
            )

    def _shared_checks(self, request: InboundRequest) -> bool:
        if self._token is not None:
            presented = request.query.get(self._token_param)
            if not presented:
                raise AuthError(f"missing {self._token_param} parameter in the endpoint URL")
            if not same(presented, self._token):
                raise AuthError(f"invalid {self._token_param} parameter in the endpoint URL")
        if self._cert_header is not None:
            verdict = header_value(request.headers, self._cert_header) or ""
            if not same(verdict, self._cert_value):
                raise AuthError("client certificate not verified")
        return self._token is not None or self._cert_header is not None

    def changes(
        self, request: InboundRequest, *, accepted: frozenset[str], received_at: datetime
    ) -> list[ContactChange]:
        envelope = read_envelope(request.body)
        return [
            self._change(
                item,
                where=f"notifications.Notification[{index}]",
                accepted=accepted,
                at=received_at,
            )
            for index, item in enumerate(envelope.notifications)
        ]

    def _change(
        self, item: ET.Element, *, where: str, accepted: frozenset[str], at: datetime
    ) -> ContactChange:
        notification_id = record_identifier(
            item.findtext(f"{{{OUTBOUND_NS}}}Id"), where=f"{where}.Id"
        )
        sobject = item.find(f"{{{OUTBOUND_NS}}}sObject")
        if sobject is None:
            raise PayloadError(f"{where}.sObject", "missing")
        where = f"{where}.sObject"
        # xsi:type="sf:Contact": the prefix is bound to the sObject namespace.
        kind = sobject.get(f"{{{XSI_NS}}}type", "").rsplit(":", 1)[-1]
        if kind not in accepted:
            raise PayloadError(
                f"{where}.type", f"{kind or 'no type'} is not one of {sorted(accepted)}"
            )
        record = self._record(sobject, where=where)
        record_id = record_identifier(record.get("Id"), where=f"{where}.Id")
        # Without LastModifiedDate among the message's fields, the receipt time stands
        # in: the message holds the record's latest data when it was sent, so the only
        # risk is a change in the seconds between sending and receiving it.
        modified_at = at
        if "LastModifiedDate" in record:
            modified_at = salesforce_time(
                record["LastModifiedDate"], where=f"{where}.LastModifiedDate"
            )
        deleted = record.get("IsDeleted") is True
        return ContactChange(
            source=self.source,
            record_id=record_id,
            operation=Operation.DELETE if deleted else Operation.UPSERT,
            event_id=notification_id,
            source_modified_at=modified_at,
            received_at=at,
            fields=flatten(record, where=where),
            origin=Origin.WEBHOOK,
        )

    def _record(self, sobject: ET.Element, *, where: str) -> dict[str, Any]:
        record: dict[str, Any] = {}
        for element in sobject:
            name = local_name(element.tag)
            if name in record:
                raise PayloadError(f"{where}.{name}", "appears twice")
            if len(element):
                # A compound value: one level of components, as the SOAP API writes them.
                record[name] = {
                    local_name(part.tag): self._value(part, where=f"{where}.{name}", nested=True)
                    for part in element
                }
            else:
                record[name] = self._value(element, where=f"{where}.{name}", nested=False)
        return record

    def _value(self, element: ET.Element, *, where: str, nested: bool) -> FieldValue:
        if nested and len(element):
            raise PayloadError(where, "nested too deeply")
        if element.get(f"{{{XSI_NS}}}nil") == "true":
            return None
        kind = None if nested else self._types.get(local_name(element.tag))
        return typed_text(element.text or "", kind=kind, where=where)
