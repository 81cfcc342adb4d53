"""Settings of the generic REST poll: any JSON API that lists records changed since a time."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from services.core.settings_base import Strict
from services.core.sources.common import ApiSettings, PollSettings, SourceBase


class CursorPaging(Strict):
    """The response names the next page's cursor; the request passes it back."""

    kind: Literal["cursor"]
    cursor_param: str = "cursor"
    next_cursor_path: str = Field(default="next_cursor", description="dotted path in the JSON")


class PagePaging(Strict):
    """Numbered pages; the last page is the first one with fewer records than asked."""

    kind: Literal["page"]
    page_param: str = "page"
    first_page: int = 1


class OffsetPaging(Strict):
    kind: Literal["offset"]
    offset_param: str = "offset"


Paging = Annotated[CursorPaging | PagePaging | OffsetPaging, Field(discriminator="kind")]


class GenericRestSource(SourceBase):
    kind: Literal["generic_rest"]
    api: ApiSettings
    poll: PollSettings | None = None
    path: str = Field(description="the list endpoint, e.g. /v1/contacts")
    since_param: str = Field(description="query parameter taking the 'modified since' time")
    since_format: Literal["iso8601", "unix_seconds", "unix_millis"] = "iso8601"
    size_param: str | None = Field(default="limit", description="page size parameter")
    extra_params: dict[str, str] = Field(
        default_factory=dict, description="sent with every request, e.g. a sort order"
    )
    paging: Paging
    records_path: str = Field(default="data", description="dotted path of the record list")
    total_path: str | None = Field(default=None, description="dotted path of the total count")
    record_id_field: str = "id"
    modified_at_field: str = "updated_at"
    deleted_field: str | None = None
    sorted_by_modification: bool = Field(
        default=True,
        description="the API returns records oldest change first, so each page can "
        "advance the watermark",
    )
