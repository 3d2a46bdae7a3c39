"""Request and response bodies of the HTTP API (they are the OpenAPI spec).

Every body refuses unknown fields, and every size is bounded, so malformed input is a
422 with the offending field named — never a 5xx.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from typing_extensions import NotRequired, Required, TypedDict

MAX_K = 1000
MAX_EVENTS = 5000
MAX_COLLECTION = 50

Text = Annotated[StrictStr, Field(min_length=1, max_length=200)]
Facet = Annotated[StrictStr, Field(max_length=100)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Event(TypedDict):
    """One raw interaction, as in an events file (only ``item_id`` is required). A TypedDict:
    events arrive as the plain dicts the engine reads, and validate faster than models."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[misc]
    item_id: Required[Text | Annotated[StrictInt, Field(ge=0, le=2**62)]]
    timestamp: NotRequired[Annotated[
        Annotated[StrictInt, Field(ge=0, le=10**13)]
        | Annotated[StrictStr, Field(min_length=1, max_length=40)] | None,
        Field(description="Seconds or milliseconds since 1970, or ISO-8601. Without "
                          "timestamps the events' order is their time.")]]
    action: NotRequired[Facet | None]
    value: NotRequired[Annotated[
        Annotated[StrictFloat | StrictInt, Field(ge=-1e12, le=1e12)] | None,
        Field(description="A duration in seconds, or a rating.")]]
    device: NotRequired[Facet | None]
    country: NotRequired[Facet | None]
    surface: NotRequired[Facet | None]
    row: NotRequired[Annotated[StrictInt, Field(ge=0, le=10**6)] | None]


class FiltersIn(Strict):
    """Business rules of this request (a surface may add its own)."""

    entity_types: list[Facet] | None = Field(None, max_length=100)
    genres: list[Facet] | None = Field(None, max_length=100,
                                       description="Items with at least one of these genres.")
    kids_only: StrictBool = False
    available_only: StrictBool = False


class UserRef(Strict):
    user_id: Text | None = Field(None, description="A known user (history from the dataset).")
    events: list[Event] | None = Field(
        None, max_length=MAX_EVENTS,
        description="Raw events, oldest first: the history of a new user, or events to "
                    "append to a known user's stored history.")
    ignore_unknown_items: StrictBool = Field(
        False, description="Drop events on items the model does not know (else 422).")


class ContextIn(Strict):
    """This visit's context: what the model reads for a member with no history yet."""

    device: Facet | None = None
    country: Facet | None = None
    timestamp: Annotated[StrictInt, Field(ge=0, le=10**13)] | None = Field(
        None, description="Seconds or milliseconds since 1970 (the hour of the week).")


class RecommendRequest(UserRef):
    context: ContextIn | None = Field(
        None, description="Without user_id and events (or for a user with no history): "
                          "the model's first items for this context.")
    surface: Annotated[StrictStr, Field(max_length=64)] = "home"
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 10
    exclude_seen: StrictBool = True
    filters: FiltersIn | None = None
    retrieval: Literal["score", "generative"] = Field(
        "score", description="`score` every eligible item, or `generative`: decode the next "
                             "item's semantic-id codes by beam search over the eligible items "
                             "(a model trained with `recfm train --semantic-ids`).")


class ItemOut(BaseModel):
    item_id: str
    title: str | None = None
    genres: list[str] | None = None
    rank: int | None = None
    score: float | None = None


class RecommendResponse(BaseModel):
    items: list[ItemOut]
    model_version: str
    how: str = Field(description="`model`, or the fallback used and why.")
    retrieval: str = Field(description="exact, hnsw or generative.")
    history_tokens: int
    window_tokens: int = Field(description="Tokens of the history the model read.")
    cache: str = Field(description="User-state cache: hit, extend:N (N tokens encoded), miss "
                                   "or off.")


class EmbedRequest(UserRef):
    pass


class EmbedResponse(BaseModel):
    vector: list[float] | None = Field(description="The user vector; null without a history.")
    dim: int
    model_version: str
    how: str


class SimilarResponse(BaseModel):
    item: ItemOut
    items: list[ItemOut]
    model_version: str
    how: str


class CollectionRequest(UserRef):
    surface: Annotated[StrictStr, Field(max_length=64)] = "home"
    n: Annotated[StrictInt, Field(ge=1, le=MAX_COLLECTION)] = 10
    beam_width: Annotated[StrictInt, Field(ge=1, le=16)] = 4
    max_per_genre: Annotated[StrictInt, Field(ge=0, le=MAX_COLLECTION)] = Field(
        2, description="At most this many items of any one genre (0: no limit).")
    exclude_seen: StrictBool = True
    filters: FiltersIn | None = None
    compare_plain: StrictBool = Field(False, description="Also return the plain top-n row.")


class Row(BaseModel):
    items: list[ItemOut]
    genre_diversity: float = Field(description="Mean pairwise Jaccard distance of genre sets.")
    max_genre_count: int


class CollectionResponse(Row):
    model_version: str
    how: str
    plain_top_n: Row | None = None


class ReloadRequest(Strict):
    run: Annotated[StrictStr, Field(min_length=1, max_length=4096)]
    data: Annotated[StrictStr, Field(min_length=1, max_length=4096)] | None = None


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str
    load_s: float


class Health(BaseModel):
    status: str  # ok, or degraded: see ``degraded``
    degraded: str | None = None  # why: known users' histories are missing
    model_version: str
    items: int
    retrieval: str
    known_users: int
    uptime_s: float


class UserList(BaseModel):
    users: list[str]
    total: int


class UserHistory(BaseModel):
    user_id: str
    history_tokens: int
    history: list[ItemOut] = Field(description="The most recent items, oldest first.")


class ItemSearch(BaseModel):
    items: list[ItemOut]
