"""A fake SecuTix S-360 that pushes contacts the way its contact webhook does.

S-360 is the sender here, so the fake is a client, not a server. It follows the same
material as ``services/ingest/connectors/s360.py`` (platform.secutix.com/webhook/contact):

1. ``upsert`` changes a contact and puts its number on the queue (once, however often
   it changes before the next run).
2. ``run`` is one scheduled run: it takes at most ``batch_size`` numbers (S, default
   100) from the queue, reads each contact as getContactData would with the configured
   details (GENERAL, ADDRESSES, AUTHORIZATIONS, CRITERIA), and POSTs them in buckets of
   at most ``bucket_size`` (bs, default 1), with HTTP Basic credentials.
3. A bucket answered with anything but 200 goes back on the queue; after 12 failed
   sends a contact is abandoned and listed in ``abandoned``, as S-360 logs it.

Not documented, so chosen as the connector reads them: HTTP Basic for "an
authentication on the remote URL"; a bucket of one sent as a bare object
(``single_object_buckets``), larger ones as an array. Names inside
``individualContact``, the addresses (besides ``isMain`` and ``zipCode``), the
authorizations and the criteria are illustrative, not confirmed by S-360's docs; so is
the optional modification-time field (``modified_field``).

S-360 is also a server, for the ``s360`` destination: ``soap_server`` serves the contact
SOAP service (ContactInformationPublicService, platform.secutix.com/backend/contacts/
update_profile) over the same contact file. It takes SOAP 1.1 envelopes authenticated by
a WS-Security UsernameToken (PasswordText), answers a bad token with a
``wsse:FailedAuthentication`` fault, a request it cannot read (unknown operation,
unknown contact element, no email nor number) with a ``soap:Client`` fault, both with
HTTP 500 as SOAP 1.1 does. ``saveIndividualContactData``'s shape is not public; the fake
takes the one createCulturalContact documents (a ``contactDataList`` of contact
elements, an ``identifier`` answered in ``identifierContactMap``) and answers
``statusCode`` ``success`` or ``failed`` with a ``statusDetail`` (an unknown contact
number, an email that is not one). A contact without a number is matched by its email
(the PUBLIC contact with that email), else created.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

from aiohttp import web

from services.ingest.connectors.s360 import basic_authorization
from tests.fakes.server import FakeServer, Faults

log = logging.getLogger(__name__)

LOGIN: Final = "crmsync"
PASSWORD: Final = "s360-webhook-pass"
DETAILS: Final = ("GENERAL", "ADDRESSES", "AUTHORIZATIONS", "CRITERIA")
MAX_SENDS: Final = 12
DEFAULT_BATCH_SIZE: Final = 100
DEFAULT_BUCKET_SIZE: Final = 1
# Which part of a contact each detail block fills (contactNumber and contactId always).
BLOCKS: Final = {
    "GENERAL": ("creationDate", "role", "individualContact"),
    "ADDRESSES": ("addresses",),
    "AUTHORIZATIONS": ("authorizations",),
    "CRITERIA": ("contactCriteria",),
}

Send = Callable[[bytes, dict[str, str]], int]


def s360_time(moment: datetime) -> str:
    """Times as S-360's JSON writes them: ``2020-10-13T10:09:27.503+00:00``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+00:00"


class FakeS360:
    def __init__(
        self,
        *,
        login: str = LOGIN,
        password: str = PASSWORD,
        details: Iterable[str] = DETAILS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        bucket_size: int = DEFAULT_BUCKET_SIZE,
        single_object_buckets: bool = True,
        modified_field: str | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.login = login
        self.password = password
        self.details = tuple(details)
        self.batch_size = batch_size
        self.bucket_size = bucket_size
        self.single_object_buckets = single_object_buckets
        self.modified_field = modified_field
        self.contacts: dict[str, dict[str, Any]] = {}
        self.queue: list[str] = []
        self.failures: Counter[str] = Counter()
        self.abandoned: list[str] = []
        self.sent: list[bytes] = []
        self._clock = clock or (lambda: datetime.now(UTC))
        self._tick = 0
        self._next_number = 1000

    # --- the contact file ----------------------------------------------------------------

    def upsert(self, number: str | None = None, **changes: Any) -> str:
        """Create (no number) or update a contact; ``changes`` are ContactDataResult parts,
        e.g. ``individualContact={"firstName": "Ada"}`` (merged) or ``addresses=[...]``."""
        if number is None:
            self._next_number += 1
            number = f"{self._next_number:08d}"
            self.contacts[number] = self._new_contact(number)
        contact = self.contacts[number]
        for name, value in changes.items():
            if isinstance(value, dict) and isinstance(contact.get(name), dict):
                contact[name] = {**contact[name], **value}
            else:
                contact[name] = value
        self._tick += 1
        contact["_modified"] = self._clock() + timedelta(microseconds=self._tick)
        if number not in self.queue:
            self.queue.append(number)
        return number

    def _new_contact(self, number: str) -> dict[str, Any]:
        now = self._clock()
        return {
            "contactNumber": number,
            "contactId": 10_228_000_000_000 + int(number),
            "creationDate": s360_time(now),
            "role": "PUBLIC",
            "individualContact": {},
            "addresses": [],
            "authorizations": [],
            "contactCriteria": [],
        }

    def seed(self, count: int) -> list[str]:
        return [
            self.upsert(
                individualContact={
                    "firstName": f"First{index}",
                    "lastName": f"Last{index}",
                    "birthDate": "1990-01-01",
                    "email": f"contact{index}@example.com",
                },
                addresses=[
                    {"isMain": False, "zipCode": "1000", "town": "Lausanne", "countryCode": "CH"},
                    {"isMain": True, "zipCode": f"{1200 + index}", "town": "Geneva"},
                ],
                authorizations=[{"code": "NEWSLETTER", "value": index % 2 == 0}],
                contactCriteria=[{"code": "FAN", "value": "true"}],
            )
            for index in range(count)
        ]

    def contact_data(self, number: str) -> dict[str, Any]:
        """The contact as getContactData returns it with the configured details."""
        contact = self.contacts[number]
        data: dict[str, Any] = {k: contact[k] for k in ("contactNumber", "contactId")}
        for block in self.details:
            for name in BLOCKS[block]:
                data[name] = json.loads(json.dumps(contact[name]))
        if self.modified_field is not None:
            data[self.modified_field] = s360_time(contact["_modified"])
        return data

    # --- the webhook -----------------------------------------------------------------------

    def webhook_request(
        self, numbers: Iterable[str], *, login: str | None = None, password: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one POST carrying these contacts."""
        contacts = [self.contact_data(number) for number in numbers]
        payload: Any = contacts
        if len(contacts) == 1 and self.single_object_buckets:
            payload = contacts[0]
        headers = {
            "Content-Type": "application/json",
            "Authorization": basic_authorization(
                self.login if login is None else login,
                self.password if password is None else password,
            ),
        }
        return json.dumps(payload).encode(), headers

    def run(self, send: Send) -> int:
        """One scheduled run of the queue; the number of contacts accepted."""
        taken, self.queue = self.queue[: self.batch_size], self.queue[self.batch_size :]
        accepted = 0
        for start in range(0, len(taken), self.bucket_size):
            bucket = taken[start : start + self.bucket_size]
            body, headers = self.webhook_request(bucket)
            self.sent.append(body)
            if send(body, headers) == 200:
                accepted += len(bucket)
            else:
                self._failed(bucket)
        return accepted

    def _failed(self, bucket: list[str]) -> None:
        for number in bucket:
            self.failures[number] += 1
            if self.failures[number] >= MAX_SENDS:
                self.abandoned.append(number)
                log.warning("synchronisation abandoned contact=%s", number)
            elif number not in self.queue:
                self.queue.append(number)

    def drain(self, send: Send, *, max_runs: int = 100) -> int:
        """Runs until the queue is empty (or ``max_runs``); the contacts accepted."""
        accepted = 0
        for _ in range(max_runs):
            if not self.queue:
                break
            accepted += self.run(send)
        return accepted


# --- the contact SOAP service (a destination's view) ------------------------------------

SOAP_ENV: Final = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE: Final = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
SERVICE_NAMESPACE: Final = "http://v2_21.ContactInformationPublicService.service.secutix.com/"
SERVICE_PATH: Final = (
    "/tnco/external-remoting/com.secutix.service.contact.v2_21"
    ".ContactInformationPublicService.webservice"
)
WS_USER: Final = "CRMSYNC_WS"
WS_PASSWORD: Final = "s360-ws-pass"
OPERATIONS: Final = frozenset({"saveIndividualContactData", "createCulturalContact"})
# CulturalContactData's documented elements, and IndividualContactData's the tests use.
CONTACT_ELEMENTS: Final = frozenset(
    {
        "contactNumber",
        "createLogin",
        "email",
        "firstName",
        "identifier",
        "lastName",
        "requestId",
        "birthDate",
        "NEWSLETTER",
    }
)
EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _envelope(body: str) -> web.Response:
    return web.Response(
        text=f'<soap:Envelope xmlns:soap="{SOAP_ENV}"><soap:Body>{body}</soap:Body>'
        "</soap:Envelope>",
        content_type="text/xml",
        charset="utf-8",
    )


def soap_fault(code: str, message: str) -> web.Response:
    fault = (
        f'<soap:Fault xmlns:wsse="{WSSE}"><faultcode>{code}</faultcode>'
        f"<faultstring>{escape(message)}</faultstring></soap:Fault>"
    )
    response = _envelope(fault)
    response.set_status(500)
    return response


class ContactService:
    """The contact SOAP service over a FakeS360's contacts."""

    def __init__(
        self, crm: FakeS360, *, username: str = WS_USER, password: str = WS_PASSWORD
    ) -> None:
        self.crm = crm
        self.username = username
        self.password = password
        self.calls: list[str] = []
        """The operations called, in order."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(SERVICE_PATH, self._call)
        return app

    async def _call(self, request: web.Request) -> web.Response:
        if "SOAPAction" not in request.headers or not request.content_type.endswith("xml"):
            return soap_fault("soap:Client", "SOAP 1.1: text/xml with a SOAPAction header")
        try:
            root = ET.fromstring(await request.read())  # noqa: S314
        except ET.ParseError as exc:
            return soap_fault("soap:Client", f"Unmarshalling Error: {exc}")
        header = root.find(f"{{{SOAP_ENV}}}Header")
        token = header.find(f".//{{{WSSE}}}UsernameToken") if header is not None else None
        if (
            token is None
            or token.findtext(f"{{{WSSE}}}Username") != self.username
            or token.findtext(f"{{{WSSE}}}Password") != self.password
        ):
            return soap_fault(
                "wsse:FailedAuthentication", "The security token could not be authenticated"
            )
        body = root.find(f"{{{SOAP_ENV}}}Body")
        operation = body[0] if body is not None and len(body) else None
        if operation is None or operation.tag not in {
            f"{{{SERVICE_NAMESPACE}}}{name}" for name in OPERATIONS
        }:
            found = operation.tag if operation is not None else "nothing"
            return soap_fault("soap:Client", f"Unexpected wrapper element {found} found")
        name = _local(operation.tag)
        self.calls.append(name)
        entries: list[str] = []
        results: list[str] = []
        for contact in operation:
            if contact.tag != "contactDataList":
                return soap_fault("soap:Client", f"Unmarshalling Error: unexpected {contact.tag}")
            values = {child.tag: (child.text or "") for child in contact}
            unknown = sorted(set(values) - CONTACT_ELEMENTS)
            if unknown:
                return soap_fault(
                    "soap:Client", f"Unmarshalling Error: unexpected element {unknown[0]}"
                )
            if not values.get("contactNumber") and not values.get("email"):
                return soap_fault("soap:Client", "a contact needs a contactNumber or an email")
            status, detail, number = self._save(values)
            if status != "success":
                return _envelope(
                    f'<ns2:{name}Response xmlns:ns2="{SERVICE_NAMESPACE}"><return>'
                    f"<statusCode>failed</statusCode><statusDetail>{escape(detail)}"
                    f"</statusDetail></return></ns2:{name}Response>"
                )
            if values.get("identifier"):
                entries.append(
                    f"<entry><key>{escape(values['identifier'])}</key>"
                    f"<value>{number}</value></entry>"
                )
            results.append(f"<culturalContactData><contactNumber>{number}</contactNumber>")
            results.append("</culturalContactData>")
        return _envelope(
            f'<ns2:{name}Response xmlns:ns2="{SERVICE_NAMESPACE}"><return>'
            f"<identifierContactMap>{''.join(entries)}</identifierContactMap>"
            f"{''.join(results)}<statusCode>success</statusCode></return></ns2:{name}Response>"
        )

    def _save(self, values: dict[str, str]) -> tuple[str, str, str]:
        email = values.get("email")
        if email is not None and not EMAIL.match(email):
            return "failed", f"invalid email: {email}", ""
        number = values.get("contactNumber") or None
        if number is not None and number not in self.crm.contacts:
            return "failed", f"no contact with number {number}", ""
        if number is None:
            number = next(
                (
                    found
                    for found, contact in self.crm.contacts.items()
                    if contact.get("role") == "PUBLIC"
                    and contact["individualContact"].get("email") == email
                ),
                None,
            )
        individual = {
            k: v
            for k, v in values.items()
            if k not in {"contactNumber", "identifier", "requestId", "createLogin", "NEWSLETTER"}
        }
        changes: dict[str, Any] = {"individualContact": individual}
        if "NEWSLETTER" in values:
            changes["authorizations"] = [
                {"code": "NEWSLETTER", "value": values["NEWSLETTER"] == "true"}
            ]
        return "success", "", self.crm.upsert(number, **changes)


def soap_server(service: ContactService, faults: Faults | None = None) -> FakeServer:
    return FakeServer(service.app(), faults)


def http_sender(url: str, *, timeout_s: float = 30.0) -> Send:
    """POSTs to a URL as S-360 does; the status it answered."""

    def send(body: bytes, headers: dict[str, str]) -> int:
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    return send


def main() -> None:
    parser = argparse.ArgumentParser(
        description="fake S-360: push contacts to a crmsync webhook URL as S-360 does"
    )
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8080/webhooks/s360")
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--bucket-size", type=int, default=DEFAULT_BUCKET_SIZE)
    parser.add_argument("--login", default=LOGIN)
    parser.add_argument("--password", default=PASSWORD)
    args = parser.parse_args()
    crm = FakeS360(
        login=args.login,
        password=args.password,
        batch_size=args.batch_size,
        bucket_size=args.bucket_size,
    )
    crm.seed(args.records)
    accepted = crm.drain(http_sender(args.url))
    print(json.dumps({"accepted": accepted, "abandoned": len(crm.abandoned)}), flush=True)


if __name__ == "__main__":
    main()
