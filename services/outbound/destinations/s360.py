"""SecuTix S-360 as a destination: each contact saved with one SOAP call.

What S-360 documents, and this module follows:

- The product document's "CRM S-360 API set-up": when a contact changes in the CRM,
  "call an S-360 API to push the change to S-360", the ``saveIndividualContactData``
  method. Its request and answer are not in the public material.
- The contact SOAP service, ContactInformationPublicService (API docs
  https://mosa.demo-ws.secutix.com/tnco/apidocs/ContactInformationPublicService_latest.html,
  version 2_21): the endpoint
  ``https://<institution>.ws.secutix.com/tnco/external-remoting/com.secutix.service.
  contact.v2_21.ContactInformationPublicService.webservice``; ``createCulturalContact``
  takes ``contactDataList`` (CulturalContactData: ``contactNumber``, ``email``,
  ``firstName``, ``lastName``, ``identifier``, ``requestId``...) and answers a
  CulturalContactCreationResult (``statusCode``, ``statusDetail``,
  ``identifierContactMap``: identifier -> contact number, ``culturalContactData``).
- https://platform.secutix.com/backend/contacts/update_profile ("API calls for a
  Profile page"): SOAP 1.1 envelopes, document/literal, the operation in the service's
  namespace (``http://v2_21.ContactInformationPublicService.service.secutix.com/``), its
  parameters unqualified, authenticated by a WS-Security ``UsernameToken`` header
  (``Username``, ``Password`` of type PasswordText), not an HTTP header.

So a contact becomes one POST of

    <soapenv:Envelope><soapenv:Header><wsse:Security><wsse:UsernameToken>...
    <soapenv:Body><v2:saveIndividualContactData><contactDataList>
      <contactNumber>...</contactNumber>  (when known) <email>...</email>
      <identifier>profile id</identifier> <firstName>...</firstName> ...
    </contactDataList></v2:saveIndividualContactData></soapenv:Body></soapenv:Envelope>

Assumed, and settable (``S360Destination``): that ``saveIndividualContactData`` takes a
contact shaped like createCulturalContact's (operation, namespace, endpoint path and
every element name are settings); that a contact without a number is found by its
email or created (a contact number is S-360's id, kept as the profile's
``crm:<source>:<number>`` identity and sent when known); that the answer carries a
``statusCode`` (``success_codes`` mean saved, anything else refuses the contact with its
``statusDetail``) and the contact number (``identifierContactMap`` entry of the sent
identifier, else the first ``contactNumber``), reported in ``assigned``. Consents are
sent as boolean elements named by the mapping. A cleared attribute is left out: how
the service clears a value is not documented.

Answers: SOAP 1.1 faults come with HTTP 500. A ``Client`` fault (the request is at
fault) refuses the contact; a WS-Security authentication fault (``FailedAuthentication``,
``InvalidSecurity``, ``InvalidSecurityToken``, ``FailedCheck``) is a refused credential,
an outage; a ``Server`` fault, 429, other 5xx and no answer are retried
(services/core/api_client.py). Each contact is its own call, so a refusal names one
profile. Erasure: the contact service documents no deletion; an erased profile's change
is refused for an operator to anonymise the contact in S-360. Sending a chunk again
saves the same values again: contacts with a number are updated in place, the others
are matched by email (assumed above), so no second contact is created.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

import httpx

from services.core.api_client import ApiError, ApiUnavailable, StaticBearer
from services.core.contracts import FieldValue
from services.core.destinations.s360 import S360Destination
from services.core.profile_changed import ProfileChangeKind
from services.outbound.destinations.base import (
    RECORD_REFUSED,
    ApiConnection,
    Delivered,
    Refusal,
    refusals,
)
from services.outbound.destinations.profiles import ProfileUpdate, by_profile, side_by_side
from services.outbound.outgoing import OutgoingChange

log = logging.getLogger(__name__)

SOAP_ENV: Final = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
# The UsernameToken profile's type of a password sent as it is (PasswordText).
CLEARTEXT_TYPE: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordText"
)
# WS-Security 1.0's fault codes for a token it did not accept.
SECURITY_FAULTS: Final = frozenset(
    {"FailedAuthentication", "InvalidSecurity", "InvalidSecurityToken", "FailedCheck"}
)
CLIENT_FAULT_STATUS: Final = 400
SECURITY_FAULT_STATUS: Final = 401
NOT_ERASABLE: Final = (
    "S-360's contact service documents no deletion: anonymise the contact in S-360"
)


@dataclass(frozen=True)
class Fault:
    code: str
    """The faultcode's local part (``Client``, ``Server.Busy``, ``FailedAuthentication``)."""
    message: str


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse(body: bytes) -> ET.Element:
    # The answer comes from the configured S-360 host; a document type (where entity
    # tricks live) has no place in a SOAP message, so one is refused outright.
    if b"<!DOCTYPE" in body[:2048].upper():
        raise ValueError("a SOAP message carries no document type declaration")
    return ET.fromstring(body)  # noqa: S314


def fault_of(body: bytes) -> Fault | None:
    """The SOAP fault an answer carries, if any."""
    try:
        root = _parse(body)
    except (ET.ParseError, ValueError):
        return None
    for element in root.iter():
        if _local(element.tag) == "Fault":
            code = element.findtext("faultcode") or ""
            return Fault(code.rsplit(":", 1)[-1], element.findtext("faultstring") or "")
    return None


def fault_status(fault: Fault) -> int | None:
    """The HTTP status a fault stands for when it is not the server's: a client fault is
    a verdict on the request, an authentication fault one on the credentials."""
    if fault.code in SECURITY_FAULTS:
        return SECURITY_FAULT_STATUS
    if fault.code == "Client" or fault.code.startswith("Client."):
        return CLIENT_FAULT_STATUS
    return None


async def _faults_as_statuses(response: httpx.Response) -> None:
    """SOAP 1.1 answers every fault with HTTP 500; a fault a retry would not change is
    given its HTTP meaning here, before the API client decides what to retry."""
    if response.status_code != 500:
        return
    await response.aread()
    fault = fault_of(response.content)
    status = fault_status(fault) if fault is not None else None
    if status is not None:
        response.status_code = status


class SoapConnection(ApiConnection):
    """An ApiConnection whose client sees SOAP faults by what they mean."""

    async def open(self) -> None:
        await super().open()
        if self._session is not None:
            self._session.event_hooks = {"response": [_faults_as_statuses]}


def _text(value: FieldValue | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def _element(name: str, value: FieldValue | bool) -> str:
    return f"<{name}>{escape(_text(value))}</{name}>"


@dataclass(frozen=True)
class Saved:
    status_code: str
    detail: str
    contact_number: str | None


def saved(body: bytes, identifier: str | None) -> Saved:
    """What the operation's answer says: its statusCode and the contact's number."""
    root = _parse(body)
    status = detail = ""
    number: str | None = None
    mapped: str | None = None
    for element in root.iter():
        name = _local(element.tag)
        if name == "statusCode" and not status:
            status = (element.text or "").strip()
        elif name == "statusDetail" and not detail:
            detail = (element.text or "").strip()
        elif name == "contactNumber" and number is None and element.text:
            number = element.text.strip()
        elif name == "entry" and identifier is not None:
            key = element.find("key")
            if key is not None and (key.text or "").strip() == identifier:
                mapped = (element.findtext("value") or "").strip() or None
    return Saved(status, detail, mapped or number)


class S360Contacts:
    def __init__(self, name: str, settings: S360Destination) -> None:
        self.name = name
        self.batch_size = settings.batch_size
        self._settings = settings
        # The credentials travel in the SOAP header, not in an HTTP one.
        self._api = SoapConnection(name, settings.api, credentials=StaticBearer(None))

    async def open(self) -> None:
        await self._api.open()

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        delivered = Delivered()
        sendable: list[OutgoingChange] = []
        for change in chunk:
            if change.event.kind is ProfileChangeKind.ERASED:
                delivered.refused.append(Refusal(change, None, NOT_ERASABLE))
            elif change.event.kind is not ProfileChangeKind.DETACHED:
                sendable.append(change)
        await side_by_side(
            by_profile(sendable),
            lambda update: self._save(update, delivered),
            limit=self._settings.concurrency,
        )
        return delivered

    async def _save(self, update: ProfileUpdate, delivered: Delivered) -> None:
        settings = self._settings
        number = update.crm_id(settings.source)
        email = update.email()
        values = {k: v for k, v in update.fields.items() if v is not None}
        if not values and not update.consents and number is not None:
            return  # only clears or structure: nothing S-360 would take
        if number is None and email is None:
            delivered.refused += [
                Refusal(c, None, "the profile has no S-360 contact number nor email to match by")
                for c in update.changes
            ]
            return
        identifier = str(update.profile_id) if settings.identifier_element else None
        body = self.envelope(update, number=number, email=email, values=values)
        try:
            response = await self._api.client.request(
                "POST",
                settings.endpoint_path,
                content=body,
                headers={
                    "Content-Type": "text/xml; charset=utf-8",
                    "Accept": "text/xml",
                    "SOAPAction": '""',
                },
            )
        except ApiUnavailable:
            raise  # not taken: the loop sends it again
        except ApiError as exc:
            delivered.refused += refusals(exc, update.changes)
            return
        try:
            result = saved(response.body, identifier)
        except (ET.ParseError, ValueError) as exc:
            delivered.refused += [
                Refusal(c, RECORD_REFUSED, f"not a SOAP answer: {exc}") for c in update.changes
            ]
            return
        if result.status_code not in settings.success_codes:
            answer = f"statusCode {result.status_code or '(none)'}: {result.detail}"
            delivered.refused += [Refusal(c, RECORD_REFUSED, answer) for c in update.changes]
            return
        if result.contact_number is not None and result.contact_number != number:
            delivered.assigned[update.profile_id] = result.contact_number

    def envelope(
        self,
        update: ProfileUpdate,
        *,
        number: str | None,
        email: str | None,
        values: Mapping[str, FieldValue],
    ) -> bytes:
        settings = self._settings
        parts: list[str] = []
        if number is not None:
            parts.append(_element(settings.contact_number_element, number))
        if email is not None and settings.email_element not in values:
            parts.append(_element(settings.email_element, email))
        if settings.identifier_element is not None:
            parts.append(_element(settings.identifier_element, update.profile_id))
        parts += [_element(name, value) for name, value in values.items()]
        parts += [_element(name, opted) for name, opted in update.consents.items()]
        contact = settings.contact_element
        operation = settings.operation
        return (
            f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" '
            f"xmlns:v2={quoteattr(settings.namespace)}>"
            "<soapenv:Header>"
            f'<wsse:Security xmlns:wsse="{WSSE}">'
            f'<wsse:UsernameToken wsu:Id="UsernameToken-1" xmlns:wsu="{WSU}">'
            f"<wsse:Username>{escape(settings.username)}</wsse:Username>"
            f'<wsse:Password Type="{CLEARTEXT_TYPE}">'
            f"{escape(settings.password.resolve())}</wsse:Password>"
            "</wsse:UsernameToken></wsse:Security>"
            "</soapenv:Header>"
            f"<soapenv:Body><v2:{operation}><{contact}>{''.join(parts)}</{contact}>"
            f"</v2:{operation}></soapenv:Body></soapenv:Envelope>"
        ).encode()

    async def close(self) -> None:
        await self._api.close()
