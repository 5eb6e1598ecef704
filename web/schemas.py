"""Request and response schemas: they validate requests and generate the OpenAPI document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchQuery(_Strict):
    """Query string of text search."""

    q: str = Field(min_length=1, max_length=1000, description="What to look for, in words.")
    k: int = Field(default=10, ge=1, le=1000, description="Number of results.")
    where: list[str] = Field(
        default_factory=list,
        description="Filters, repeatable: key=value, key=a|b, key!=v, key<=n, key>=n, key<n, key>n.",
    )
    one_per: str | None = Field(
        default=None, max_length=64, description="At most one hit per value of this payload field."
    )


class SimilarQuery(_Strict):
    """Query string of similar-image and search-by-image requests."""

    k: int = Field(default=10, ge=1, le=1000)
    where: list[str] = Field(default_factory=list)
    one_per: str | None = Field(default=None, max_length=64)


class RecommendBody(_Strict):
    """Positive and negative examples (image ids)."""

    positive: list[str] = Field(min_length=1, max_length=64)
    negative: list[str] = Field(default_factory=list, max_length=64)
    k: int = Field(default=10, ge=1, le=1000)
    where: list[str] = Field(default_factory=list)
    one_per: str | None = Field(default=None, max_length=64)


class UrlsBody(_Strict):
    """URLs to download and ingest."""

    urls: list[str] = Field(min_length=1, max_length=10_000)
    metadata: dict[str, Any] = Field(default_factory=dict)


class Hit(BaseModel):
    """One ranked image."""

    rank: int
    image_id: str
    score: float = Field(description="Cosine similarity (recommend: sum of similarities).")
    payload: dict[str, Any]


class Hits(BaseModel):
    """Ranked results."""

    results: list[Hit]


class Refused(BaseModel):
    """An upload item that was refused, and why."""

    filename: str | None
    error: str
    message: str


class Accepted(BaseModel):
    """An upload item that was accepted and queued."""

    filename: str | None
    image_id: str


class UploadReceipt(BaseModel):
    """202 answer to an upload."""

    job_id: str
    accepted: list[Accepted]
    refused: list[Refused]


class JobRef(BaseModel):
    """202 answer to anything that starts a job."""

    job_id: str


class FailedItem(BaseModel):
    """A failed job item with its reason."""

    item: str
    image_id: str | None
    reason: str | None
    attempts: int


class JobStatus(BaseModel):
    """A job's state, counts and failed items."""

    id: str
    kind: str
    state: str
    total: int
    counts: dict[str, int]
    created_at: str
    reason: str | None
    meta: dict[str, Any]
    failed_items: list[FailedItem]


class ImageInfo(BaseModel):
    """An image's stored payload (metadata, tags, moderation state)."""

    image_id: str
    payload: dict[str, Any]


class ErrorBody(BaseModel):
    """The ``error`` member of every error response."""

    code: str
    message: str
    fields: list[dict[str, str]] | None = None


class ErrorResponse(BaseModel):
    """Every error: ``{"error": {"code", "message"}}``."""

    error: ErrorBody
