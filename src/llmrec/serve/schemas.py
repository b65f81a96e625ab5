"""The request and response bodies of the service, as pydantic models: FastAPI validates requests
against them and publishes them in the OpenAPI schema (``/docs``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

#: the largest ``k`` a request may ask for (a bound in the OpenAPI schema)
MAX_K = 1000
#: the most values a rule may list, and item ids ``exclude_items`` may list
MAX_RULE_VALUES, MAX_EXCLUDE_ITEMS = 1000, 10_000
#: the most items one ``POST /items`` may add
MAX_NEW_ITEMS = 1000


# request and response bodies: strict (no coercion: "10" is not a k), an unknown key is an error
_STRICT = ConfigDict(extra="forbid", strict=True)
_USER_ID = Field(None, description="a user of the run's dataset: their whole sequence is the history")
_HISTORY = Field(None, description="an ad-hoc history of item ids, oldest first (instead of user_id)")
_MODEL = Field(
    None, max_length=200, description="which served run answers, by name (GET /models); default: the first"
)
# column -> values (text, numbers, true/false)
_Rules = dict[str, Annotated[list[str | int | float | bool], Field(min_length=1, max_length=MAX_RULE_VALUES)]]


class RecommendRequest(BaseModel):
    """Give exactly one of user_id or history."""

    model_config = _STRICT
    user_id: str | None = _USER_ID
    history: list[str] | None = _HISTORY
    model: str | None = _MODEL
    k: int = Field(10, ge=1, le=MAX_K, description="how many items")
    exclude_history: bool = Field(True, description="never recommend an item of the history")
    candidates: list[str] | None = Field(None, description="only rank these item ids (default: the catalog)")
    include: _Rules | None = Field(
        None,
        max_length=64,
        description='only items with these attribute values, e.g. {"category": ["Horror"]}: an item must '
        "match every column named, any of its values (text case-insensitively, whole or by part of a list "
        'such as "Comedy, Horror")',
    )
    exclude: _Rules | None = Field(
        None,
        max_length=64,
        description='never items with any of these attribute values, e.g. {"year": [1995]}',
    )
    exclude_items: list[str] | None = Field(
        None, max_length=MAX_EXCLUDE_ITEMS, description="never these item ids"
    )


class RankRequest(BaseModel):
    """Give exactly one of user_id or history, and the candidates to score."""

    model_config = _STRICT
    user_id: str | None = _USER_ID
    history: list[str] | None = _HISTORY
    model: str | None = _MODEL
    candidates: list[str] = Field(min_length=1, description="item ids to score, each once")


class NewItem(BaseModel):
    """One item to add: its id (new to the catalog) and what the run's encoders read."""

    model_config = _STRICT
    item_id: str = Field(min_length=1, description="an id the catalog does not have yet")
    title: str = ""
    brand: str = ""
    category: str = Field("", description='e.g. "Comedy, Horror" or "Books > Horror"')
    description: str = ""
    image: str | None = Field(None, description="an image file, relative to the service's --image-dir")
    extra: dict[str, Any] | None = Field(None, description="any other attributes (rules can filter on them)")


class AddItemsRequest(BaseModel):
    """New items, added together (all or none)."""

    model_config = _STRICT
    items: list[NewItem] = Field(min_length=1, max_length=MAX_NEW_ITEMS)
    model: str | None = _MODEL


class AddedItems(BaseModel):
    """What ``POST /items`` answers."""

    added: list[str] = Field(description="the ids added, recommendable from now on")
    items: int = Field(description="the catalog's size now")
    took_ms: float


class ScoredItem(BaseModel):
    item_id: str
    title: str
    score: float


class Recommendations(BaseModel):
    items: list[ScoredItem] = Field(description="best first")
    model: str = Field(description="the registered name of the model that answered (sasrec, illmrec...)")
    run: str = Field(description="the served run that answered, by name (a request's model field)")
    took_ms: float = Field(description="time spent in the service, queueing included")
    recommendation_id: str = Field(
        description="this answer's id: send it back with later feedback (a click, a purchase) to join them"
    )


class SimilarItems(BaseModel):
    item_id: str = Field(description="the item asked about")
    items: list[ScoredItem] = Field(
        description="the most similar items, best first (score: cosine similarity of the model's item vectors)"
    )
    model: str
    took_ms: float = Field(description="time spent in the service")


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong, where, and what to do")
    field: str | None = Field(None, description="the request field at fault")
