"""webCRM as a destination: profiles written as persons through the webCRM REST API.

Documented behaviour followed:

- "webCRM REST API" (webcrm.com/customer-service/api/rest-api) and the Swagger
  definition at api.webcrm.com, as the SDK webCRM generated from it shows it
  (github.com/webCRMdotcom/ErpIntegrations, ApiClients/WebcrmApiClient/WebcrmSdk.cs):
  ``POST /Persons`` "adds new person and returns assigned id" (a PersonDto body, the
  answer the id as a JSON number); ``PUT /Persons/{id}`` "updates person with specified
  id" (a PersonDto body, answer 200 or 204); ``GET /Persons/{id}`` returns one;
  ``GET /Queries?script=&Page=&Size=`` runs a ``SELECT`` and returns the rows as
  PersonDto-shaped objects. PersonDto fields are ``PersonId`` (required, 0 for a new
  person), ``PersonEmail``, ``PersonFirstName``, ``PersonOrganisationId``,
  ``PersonBlockMassEmail``, ``PersonCheckMark1`` to ``10``, ``PersonCustom...``, ...
- Authentication: the application token exchanged for an hour-long access token
  (``AccessToken`` of the webCRM source connector, renewed on 401).
- Rate limit: 250 requests per minute per application token; past it a 429 with
  ``Retry-After`` (``ApiClient`` waits it out); the settings keep the rate below it.

Steps of a chunk: its changes are folded into one write per profile (profiles.py);
each profile, in order:

1. ERASED: the person (by id, else found by email) is read, then deleted with
   ``DELETE /Persons/{id}``; a person that is not there (404 on the read) is gone
   already, which a resend after a crash meets.
2. A profile carrying ``crm:<source>:<id>`` (``source`` the crmsync source reading this
   webCRM) is that person: read with ``GET /Persons/{id}``, changed, written back whole
   with ``PUT``. A 404 refuses the profile.
3. Else its email finds the person: ``SELECT * FROM Person WHERE PersonEmail = '...'
   ORDER BY PersonId``, the first row (the oldest person) taken and written back with
   the changes; none found, ``POST /Persons`` creates it (``PersonOrganisationId``
   from the settings). webCRM has no idempotency keys: finding before creating is what
   keeps a resent chunk from duplicating persons. The person's id is reported in
   ``Delivered.assigned``.

What changed is applied to the person: the mapped fields, the consents
(``PersonBlockMassEmail`` true when not opted in; a check mark true when opted in) and
``PersonEmail`` when the profile is new or gained an email. A cleared attribute is
left out, or written as an empty text with ``send_clears`` (webCRM's generated clients
never send null: it would not clear). A 4xx refuses that profile only; 401 / 403 is an
outage (``refusals``). A profile without an email or a webCRM id is refused, and so is
an email a query script cannot carry safely (``/Queries`` takes script text, no bound
parameters, so only plain addresses are written into one).

What the documentation leaves open, and how this module decides:

- Whether ``PUT`` replaces the whole person or only the fields its body has: the body
  is the whole person as just read, as webCRM's own integrations write
  (ErpIntegrations ``UpdatePerson`` after ``GetPersonById``). An edit made in webCRM
  between the read and the write is overwritten.
- ``PATCH /Persons`` (a list: "updates or inserts submitted persons. Returns assigned
  ids for inserted persons and error messages") is not used: which answer belongs to
  which person is not documented, so a refusal could not be pinned on its profile.
- The Swagger definition in webCRM's SDK has no ``DELETE /Persons/{id}`` (its deletes
  are for documents, hooks and linked data). This module sends it as the REST
  convention has it; if webCRM answers 404 or 405 to the delete of a person it has just
  returned, the erasure is refused with that answer and dead-lettered for an operator,
  never taken as done.
- Whether the email comparison of a query ignores case follows the account's database;
  crmsync sends the email as the profile has it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from services.core.api_client import ApiError, ApiUnavailable
from services.core.contracts import FieldValue
from services.core.destinations.webcrm import BLOCK_MASS_EMAIL, WebCrmDestination
from services.ingest.connectors.webcrm import QUERIES_PATH, AccessToken
from services.outbound.destinations.base import ApiConnection, Delivered
from services.outbound.destinations.profiles import ProfileWrite, Unsendable, write_each
from services.outbound.outgoing import OutgoingChange

PERSONS_PATH: Final = "/Persons"
NOT_FOUND: Final = 404
# Only such an email is written into a query script (no quote, backslash or space).
SCRIPT_SAFE_EMAIL: Final = re.compile(r"^[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}$")

Person = dict[str, Any]


def person_changes(
    write: ProfileWrite, *, send_clears: bool, with_email: bool
) -> dict[str, FieldValue]:
    """What changed, as webCRM person fields."""
    changes: dict[str, FieldValue] = {}
    for name, value in write.fields.items():
        if value is None:
            if send_clears:
                changes[name] = ""
            continue
        changes[name] = value
    for name, opted_in in write.consents.items():
        changes[name] = not opted_in if name == BLOCK_MASS_EMAIL else opted_in
    if with_email and write.email is not None:
        changes["PersonEmail"] = write.email
    return changes


def email_script(email: str) -> str:
    if not SCRIPT_SAFE_EMAIL.match(email):
        raise Unsendable("the profile's email has characters a webCRM query cannot carry")
    # Only an address matching SCRIPT_SAFE_EMAIL is ever written into the script.
    return f"SELECT * FROM Person WHERE PersonEmail = '{email}' ORDER BY PersonId"  # noqa: S608


class WebCrmPersons:
    def __init__(self, name: str, settings: WebCrmDestination) -> None:
        self.name = name
        self.batch_size = settings.batch_size
        self._settings = settings
        api = settings.api
        credentials = AccessToken(
            base_url=api.base_url,
            app_token=api.token.resolve() if api.token is not None else "",
            timeout_seconds=api.timeout_seconds,
        )
        self._api = ApiConnection(name, api, credentials=credentials)

    async def open(self) -> None:
        await self._api.open()

    async def send(self, chunk: Sequence[OutgoingChange]) -> Delivered:
        return await write_each(
            chunk,
            source=self._settings.source,
            write=self._write,
            limit=self._settings.concurrency,
        )

    async def _write(self, write: ProfileWrite) -> str | None:
        """The profile's PersonId once written; None when nothing was."""
        if write.erased:
            await self._erase(write)
            return None
        if not write.has_news:
            return None
        if write.record_id is not None:
            person = await self._read(write.record_id)
            if person is None:
                raise ApiError(
                    status=NOT_FOUND,
                    path=f"{PERSONS_PATH}/{{id}}",
                    detail="webCRM has no person with the profile's PersonId",
                )
            return await self._update(person, write, with_email=write.new_email)
        if write.email is None:
            raise Unsendable("the profile has neither an email nor a webCRM PersonId")
        existing = await self._find(write.email)
        if existing is not None:
            return await self._update(existing, write, with_email=False)
        return await self._create(write)

    async def _erase(self, write: ProfileWrite) -> None:
        person: Person | None = None
        if write.record_id is not None:
            person = await self._read(write.record_id)
        elif write.email is not None:
            person = await self._find(write.email)
        if person is None:
            return  # no such person in webCRM: nothing to erase
        await self._api.client.request("DELETE", f"{PERSONS_PATH}/{person['PersonId']}")

    async def _update(self, person: Person, write: ProfileWrite, *, with_email: bool) -> str:
        changes = person_changes(
            write, send_clears=self._settings.send_clears, with_email=with_email
        )
        person_id = str(person["PersonId"])
        if any(person.get(name) != value for name, value in changes.items()):
            await self._api.client.request(
                "PUT", f"{PERSONS_PATH}/{person_id}", json_body={**person, **changes}
            )
        return person_id

    async def _create(self, write: ProfileWrite) -> str:
        body: dict[str, Any] = {"PersonId": 0}
        if self._settings.organisation_id is not None:
            body["PersonOrganisationId"] = self._settings.organisation_id
        body.update(person_changes(write, send_clears=False, with_email=True))
        answer = await self._api.client.post_json(PERSONS_PATH, body=body)
        if isinstance(answer, bool) or not isinstance(answer, int) or answer <= 0:
            raise ApiError(status=200, path=PERSONS_PATH, detail="no PersonId in the answer")
        return str(answer)

    async def _read(self, person_id: str) -> Person | None:
        """The person as webCRM holds it; None when it has none with that id."""
        if not person_id.isdigit():
            raise Unsendable("the profile's webCRM id is not a PersonId")
        try:
            document = await self._api.client.get_json(f"{PERSONS_PATH}/{person_id}")
        except ApiError as exc:
            if exc.status == NOT_FOUND and not isinstance(exc, ApiUnavailable):
                return None
            raise
        return self._person(document, path=f"{PERSONS_PATH}/{{id}}")

    async def _find(self, email: str) -> Person | None:
        params = {"script": email_script(email), "Page": "1", "Size": "1"}
        rows = await self._api.client.get_json(QUERIES_PATH, params=params)
        if not isinstance(rows, list):
            raise ApiError(status=200, path=QUERIES_PATH, detail="the answer is not a list")
        return self._person(rows[0], path=QUERIES_PATH) if rows else None

    @staticmethod
    def _person(document: Any, *, path: str) -> Person:
        person_id = document.get("PersonId") if isinstance(document, dict) else None
        if isinstance(person_id, bool) or not isinstance(person_id, int):
            raise ApiError(status=200, path=path, detail="no PersonId in the answer")
        return dict(document)

    async def close(self) -> None:
        await self._api.close()
