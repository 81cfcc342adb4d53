"""Settings of SecuTix S-360 as a destination: contacts saved through its contact SOAP
service (what is documented and what is assumed: services/outbound/destinations/s360.py)."""

from __future__ import annotations

import re
from typing import Final, Literal

from pydantic import Field, field_validator, model_validator

from services.core.destinations.common import ProfileAtATime
from services.core.settings_base import SecretRef
from services.core.sources.common import ApiSettings, checked_api

SERVICE_VERSION: Final = "v2_21"
"""The latest stable ContactInformationPublicService version its docs name."""
DEFAULT_ENDPOINT_PATH: Final = (
    f"/tnco/external-remoting/com.secutix.service.contact.{SERVICE_VERSION}"
    ".ContactInformationPublicService.webservice"
)
DEFAULT_NAMESPACE: Final = (
    f"http://{SERVICE_VERSION}.ContactInformationPublicService.service.secutix.com/"
)
XML_NAME: Final = r"^[A-Za-z_][A-Za-z0-9_.-]*$"


class S360Destination(ProfileAtATime):
    """SecuTix S-360: one SOAP call per contact (``saveIndividualContactData`` by default),
    authenticated with a WS-Security UsernameToken as the contact service documents."""

    kind: Literal["s360"]
    api: ApiSettings = Field(
        description="base_url: the institution's web-service host, "
        "https://<institution code>.ws.secutix.com; token: unused (the SOAP header carries "
        "the username and password)"
    )
    username: str = Field(min_length=1, description="the web-service user (UsernameToken)")
    password: SecretRef = Field(description="its password, sent as PasswordText")
    endpoint_path: str = Field(
        default=DEFAULT_ENDPOINT_PATH,
        pattern=r"^/\S*$",
        description="the contact service's path on the host (its version in the name)",
    )
    namespace: str = Field(
        default=DEFAULT_NAMESPACE,
        pattern=r"^\S+$",
        description="the service's target namespace, the same version as endpoint_path",
    )
    operation: str = Field(
        default="saveIndividualContactData",
        pattern=XML_NAME,
        description="the operation called; S-360 names saveIndividualContactData for a "
        "change made in the CRM",
    )
    contact_element: str = Field(
        default="contactDataList",
        pattern=XML_NAME,
        description="the element carrying the contact (createCulturalContact's "
        "contactDataList by default)",
    )
    contact_number_element: str = Field(default="contactNumber", pattern=XML_NAME)
    email_element: str = Field(default="email", pattern=XML_NAME)
    identifier_element: str | None = Field(
        default="identifier",
        pattern=XML_NAME,
        description="the element given crmsync's profile id, which S-360 answers in "
        "identifierContactMap with the contact number; None to leave it out",
    )
    success_codes: list[str] = Field(
        default_factory=lambda: ["success"],
        min_length=1,
        description="the answer's statusCode values that mean the contact was saved",
    )
    batch_size: int = Field(
        default=50, ge=1, le=500, description="contacts per chunk (one SOAP call each)"
    )

    @field_validator("api")
    @classmethod
    def _host_only(cls, api: ApiSettings) -> ApiSettings:
        return checked_api(
            api,
            needs=None,
            example="https://myinstit.ws.secutix.com",
            adds="the service path (endpoint_path)",
        )

    @model_validator(mode="after")
    def _element_names(self) -> S360Destination:
        names = {**self.attributes, **{v: v for v in self.consents.values()}}
        bad = sorted(name for name in names.values() if not re.match(XML_NAME, name))
        if bad:
            raise ValueError(
                f"attributes and consents name S-360 contact elements, which must be XML "
                f"names (e.g. firstName): {', '.join(bad)}"
            )
        if not self.attributes:
            raise ValueError(
                "attributes: map each profile attribute to its S-360 contact element "
                "(e.g. first_name: firstName); S-360 refuses elements it does not know"
            )
        return self
