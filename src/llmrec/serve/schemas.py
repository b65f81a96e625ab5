"""The request and response bodies of the service, as pydantic models: FastAPI validates requests
against them and publishes them in the OpenAPI schema (``/docs``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: the largest ``k`` a request may ask for (a bound in the OpenAPI schema)
MAX_K = 1000


# request and response bodies: strict (no coercion: "10" is not a k), an unknown key is an error
_STRICT = ConfigDict(extra="forbid", strict=True)
_USER_ID = Field(None, description="a user of the run's dataset: their whole sequence is the history")
_HISTORY = Field(None, description="an ad-hoc history of item ids, oldest first (instead of user_id)")


class RecommendRequest(BaseModel):
    """Give exactly one of user_id or history."""

    model_config = _STRICT
    user_id: str | None = _USER_ID
    history: list[str] | None = _HISTORY
    k: int = Field(10, ge=1, le=MAX_K, description="how many items")
    exclude_history: bool = Field(True, description="never recommend an item of the history")
    candidates: list[str] | None = Field(None, description="only rank these item ids (default: the catalog)")


class RankRequest(BaseModel):
    """Give exactly one of user_id or history, and the candidates to score."""

    model_config = _STRICT
    user_id: str | None = _USER_ID
    history: list[str] | None = _HISTORY
    candidates: list[str] = Field(min_length=1, description="item ids to score, each once")


class ScoredItem(BaseModel):
    item_id: str
    title: str
    score: float


class Recommendations(BaseModel):
    items: list[ScoredItem] = Field(description="best first")
    model: str
    took_ms: float = Field(description="time spent in the service, queueing included")


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
