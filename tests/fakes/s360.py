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
"""

from __future__ import annotations

import argparse
import json
import logging
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from services.ingest.connectors.s360 import basic_authorization

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
