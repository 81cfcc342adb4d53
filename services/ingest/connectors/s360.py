"""SecuTix S-360 push: the contact webhook ("Contact Webhook V2") and the contacts it sends.

What S-360 documents, and this module follows (all pages undated; read in the stored
copies of the public material, see the team report for the search):

- platform.secutix.com/webhook/contact ("Contact webhook", the S-360-branded revision):
  each time a contact is created or updated, its number joins a queue; every M minutes
  (1-1440) S-360 takes S contacts from the queue (default 100) and POSTs them to the
  URL, at most ``bs`` contacts per request (the bucket size, default 1). "The data in
  the JSON is the data described by the following method: getContactData of the
  contact API". The URL must "return 200 when accepted"; anything it returns is
  ignored; on an error "the same contact will be sent every M minute, 12 times", then
  abandoned (and logged on the S-360 side). S-360 "can process an authentication on
  the remote URL"; the stored copy of the page lists no protocol. The "Details" chosen
  in the interface (GENERAL: first name, last name, date of birth...; ADDRESSES;
  AUTHORIZATIONS: opt-ins; CRITERIA; ...) select which parts of the contact are sent.
- confluence.secutix.com "CRM integration - contact data synchronization": the
  interface is a Firehose Contact of type "Contact Webhook V2", data sent GENERAL,
  ADDRESSES, AUTHORIZATIONS, CRITERIA, scheduled "Notify change in contact" in
  "batches of 100, once every minute".
- ContactInformationPublicService API docs (mosa.demo-ws.secutix.com/tnco/apidocs,
  v2_8 to v2_14) and the filter syntax of platform.secutix.com/webhook/contact/v1:
  getContactData returns ContactDataResult, whose top-level fields include
  ``contactNumber`` (String (20)), ``contactId`` (Long), ``creationDate``, ``role``,
  ``individualContact``, ``addresses`` (ContactAddressData, with ``isMain`` and
  ``zipCode``: "addresses(isMain).zipCode"), ``authorizations``, ``contactCriteria``
  and ``indicators``.

So: one request is one ContactDataResult object or a JSON array of them (a bucket;
which of the two a bucket of one is, is not documented, so both are read). Each
becomes an UPSERT of record ``contactNumber``; the answer is 200.

Not documented, so chosen here (and settable per source, see ``S360Source``):

- Authentication: HTTP Basic (RFC 7617) with the interface's login and password, both
  compared in constant time. S-360 signs nothing and sends no timestamp, so a captured
  request could be replayed; serve the endpoint over TLS only.
- Fields: the CRM's own names, flattened with dots (``individualContact.firstName``).
  The detail blocks are not named in the payload, so they give no prefix. Of the
  addresses, the main one (``isMain`` true) becomes ``addresses(isMain).<field>``, in
  S-360's own filter notation; other addresses are not kept. Other lists of objects
  become ``name[i].<field>``, or ``name(key=value).<field>`` when ``list_keys`` names
  the items' key (the filter notation of ``OperationDatas(ProductCode=X)``).
- The primary email: the first non-blank string among ``email_paths``, copied into the
  plain field ``email`` (the default ``email_field``).
- The version: ``modified_at_field`` when configured; else the time S-360 delivered the
  contact, which S-360 reads when it sends it, with the position in the bucket as the
  sequence. Event id: ``version_event_id`` with a configured modification time; else a
  digest of the contact's content, so a resend of the same state gets the same id.
- Deletions and anonymisations: none documented; ``deletion`` names the field and values
  that mark one, and such a contact becomes a DELETE.
- A bad contact fails its whole request (400, kept on the rejected topic): S-360 will
  resend it 12 times in vain, then give up and log it; replay it after a fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from services.core.bearer import same
from services.core.contracts import ContactChange, FieldValue, Operation, Origin
from services.core.sources.s360 import PRIMARY_EMAIL, S360Deletion, S360Source
from services.ingest.auth import header
from services.ingest.connectors.base import (
    AuthError,
    InboundRequest,
    PayloadError,
    SourceConnectors,
    WebhookAnswer,
    json_answer,
)
from services.ingest.fields import load_json, parse_timestamp, scalar_or_list, version_event_id

AUTHORIZATION: Final = "Authorization"
CONTACT_NUMBER: Final = "contactNumber"
# ContactDataResult.contactNumber is "String (20)" in the contact API docs.
CONTACT_NUMBER_MAX: Final = 20
ADDRESSES: Final = "addresses"
MAIN_FLAG: Final = "isMain"
MAIN_ADDRESS: Final = "addresses(isMain)"


# --- authentication ------------------------------------------------------------------


def basic_credentials(headers: Mapping[str, str]) -> tuple[str, str]:
    """The login and password of an ``Authorization: Basic`` header (RFC 7617, UTF-8)."""
    scheme, _, encoded = header(headers, AUTHORIZATION).strip().partition(" ")
    if scheme.lower() != "basic":
        raise AuthError("not HTTP Basic credentials")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("malformed Basic credentials") from None
    login, colon, password = decoded.partition(":")
    if not colon:
        raise AuthError("malformed Basic credentials")
    return login, password


def basic_authorization(login: str, password: str) -> str:
    """The header value S-360 would send for these credentials."""
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


# --- flattening ----------------------------------------------------------------------


def flatten_contact(
    contact: Mapping[str, Any], *, where: str, list_keys: Mapping[str, str]
) -> dict[str, FieldValue]:
    """A ContactDataResult as flat fields named by S-360's own field names."""
    fields: dict[str, FieldValue] = {}
    for name, value in contact.items():
        if name == ADDRESSES:
            _main_address(fields, value, where=where, list_keys=list_keys)
        else:
            _flatten(fields, name, value, where=where, list_keys=list_keys)
    return fields


def _main_address(
    fields: dict[str, FieldValue], value: Any, *, where: str, list_keys: Mapping[str, str]
) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise PayloadError(f"{where}.{ADDRESSES}", "must be a list of addresses")
    for address in value:
        # Strictly true: a flag S-360 sends as a JSON boolean.
        if isinstance(address, Mapping) and address.get(MAIN_FLAG) is True:
            _flatten(fields, MAIN_ADDRESS, address, where=where, list_keys=list_keys)
            return


def _flatten(
    fields: dict[str, FieldValue],
    name: str,
    value: Any,
    *,
    where: str,
    list_keys: Mapping[str, str],
) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(fields, f"{name}.{key}", item, where=where, list_keys=list_keys)
    elif isinstance(value, list) and any(isinstance(i, Mapping | list) for i in value):
        names = _item_names(name, value, key=list_keys.get(name))
        for item_name, item in zip(names, value, strict=True):
            _flatten(fields, item_name, item, where=where, list_keys=list_keys)
    else:
        fields[name] = scalar_or_list(value, where=f"{where}.{name}")


def _item_names(name: str, items: list[Any], *, key: str | None) -> list[str]:
    """``name(key=value)`` when every item has a distinct key value, else ``name[i]``."""
    if key is not None:
        values = [_key_value(item, key) for item in items]
        if None not in values and len(set(values)) == len(values):
            return [f"{name}({key}={value})" for value in values]
    return [f"{name}[{index}]" for index in range(len(items))]


def _key_value(item: Any, key: str) -> str | None:
    value = item.get(key) if isinstance(item, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    return text or None


def primary_email(fields: Mapping[str, FieldValue], paths: Sequence[str]) -> str | None:
    for path in paths:
        value = fields.get(path)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def content_event_id(source: str, record_id: str, contact: Mapping[str, Any]) -> str:
    """The id of one state of a contact: the same state sent again gets the same id."""
    canonical = json.dumps(contact, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{source}\x00{record_id}\x00{canonical}".encode()).hexdigest()
    return f"s360:{digest[:32]}"


def _as_text(value: FieldValue) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def is_deleted(fields: Mapping[str, FieldValue], deletion: S360Deletion | None) -> bool:
    if deletion is None:
        return False
    return _as_text(fields.get(deletion.field)) in deletion.values


# --- the connector -------------------------------------------------------------------


class S360WebhookConnector:
    def __init__(self, *, source: str, settings: S360Source) -> None:
        self.source = source
        self._settings = settings
        self._login = settings.auth.login
        # Resolved once: a missing secret stops the service at start, not at a request.
        self._password = settings.auth.password.resolve()

    def authenticate(self, request: InboundRequest, *, now: datetime) -> None:
        login, password = basic_credentials(request.headers)
        # Both compared, always: timing says nothing about which of the two was wrong.
        login_ok = same(login, self._login)
        password_ok = same(password, self._password)
        if not (login_ok and password_ok):
            raise AuthError("invalid login or password")

    def answer(self, request: InboundRequest, accepted: int) -> WebhookAnswer:
        # S-360 wants 200 and ignores the body.
        return json_answer(accepted)

    def parse(self, request: InboundRequest, *, received_at: datetime) -> Sequence[ContactChange]:
        contacts = self._bucket(load_json(request.body))
        return [
            self._change(contact, index=index, where=f"body[{index}]", received_at=received_at)
            for index, contact in enumerate(contacts)
        ]

    def _bucket(self, document: Any) -> list[Any]:
        if isinstance(document, dict):
            return [document]
        if not isinstance(document, list) or not document:
            raise PayloadError(
                "body", "must be a contact (getContactData) or a non-empty array of them"
            )
        cap = self._settings.max_contacts_per_request
        if len(document) > cap:
            raise PayloadError("body", f"more than {cap} contacts")
        return document

    def _change(
        self, contact: Any, *, index: int, where: str, received_at: datetime
    ) -> ContactChange:
        if not isinstance(contact, dict):
            raise PayloadError(where, "must be a JSON object (a getContactData contact)")
        settings = self._settings
        record_id = _contact_number(contact.get(CONTACT_NUMBER), where=f"{where}.{CONTACT_NUMBER}")
        fields = flatten_contact(contact, where=where, list_keys=settings.list_keys)
        email = primary_email(fields, settings.email_paths)
        if email is not None:
            fields[PRIMARY_EMAIL] = email
        if settings.modified_at_field is None:
            modified_at = received_at
            event_id = content_event_id(self.source, record_id, contact)
        else:
            modified_at = parse_timestamp(
                fields.get(settings.modified_at_field),
                where=f"{where}.{settings.modified_at_field}",
            )
            event_id = version_event_id(self.source, record_id, modified_at)
        deleted = is_deleted(fields, settings.deletion)
        return ContactChange(
            source=self.source,
            record_id=record_id,
            operation=Operation.DELETE if deleted else Operation.UPSERT,
            event_id=event_id,
            source_modified_at=modified_at,
            received_at=received_at,
            fields={} if deleted else fields,
            # A contact twice in one bucket: the later one is the newer reading.
            sequence=index,
            origin=Origin.WEBHOOK,
        )


def _contact_number(value: Any, *, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(where, "missing or not a non-empty string")
    number = value.strip()
    if len(number) > CONTACT_NUMBER_MAX:
        raise PayloadError(where, f"longer than {CONTACT_NUMBER_MAX} characters")
    return number


def connectors(source: str, settings: S360Source) -> SourceConnectors:
    # Push only: S-360 sends every created or updated contact itself; a pull through the
    # contact API (getContactData, per contact number) is not part of this connector.
    return SourceConnectors(webhook=S360WebhookConnector(source=source, settings=settings))
