"""Request and response schemas: they validate requests and generate the OpenAPI document."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from services.filters import MAX_EXPRESSION_CHARS, MAX_EXPRESSIONS
from services.search.service import MAX_K


def _valid_text(value: str) -> str:
    """Text the model and the stores can take: valid Unicode, no control characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError("not valid Unicode (an unpaired surrogate)") from e
    if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
        raise ValueError("control characters are not allowed")
    return value


def _cursor(value: str | None) -> str | None:
    if value is not None:
        try:
            uuid.UUID(value)
        except ValueError as e:
            raise ValueError("not a cursor this API returned (next_offset)") from e
    return value


# No control characters but tab, newline and carriage return (also checked in _valid_text,
# which adds what a pattern cannot say: no unpaired surrogates).
TEXT_PATTERN = "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]*$"
# The filter syntax, for the document and for generated clients; services.filters decides.
FILTER_PATTERN = (
    r"^ *[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)* *(<=|>=|!=|=|<|>) *"
    r"[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$"
)
URL_PATTERN = r"^https?://[^\x00-\x20\x7f]+$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _exactly_one(*names: str) -> dict[str, Any]:
    """JSON Schema for "exactly one of these fields" (what the model validator enforces)."""
    return {
        "oneOf": [
            {
                "required": [n],
                "properties": {
                    n: {"type": "string"},
                    **{o: {"type": "null"} for o in names if o != n},
                },
            }
            for n in names
        ]
    }


Text = Annotated[str, Field(pattern=TEXT_PATTERN), AfterValidator(_valid_text)]
Expression = Annotated[
    str, Field(max_length=MAX_EXPRESSION_CHARS, pattern=FILTER_PATTERN), AfterValidator(_valid_text)
]
Where = Annotated[
    list[Expression],
    Field(
        default_factory=list,
        max_length=MAX_EXPRESSIONS,
        description="Filters, repeatable: key=value, key=a|b, key!=v, key<=n, key>=n, key<n, key>n.",
    ),
]
ImageRef = Annotated[str, Field(min_length=1, max_length=64)]
Label = Annotated[Text, Field(min_length=1, max_length=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SearchQuery(_Strict):
    """Query string of text search."""

    q: Text = Field(min_length=1, max_length=1000, description="What to look for, in words.")
    k: int = Field(default=10, ge=1, le=MAX_K, description="Number of results.")
    offset: int = Field(
        default=0, ge=0, le=MAX_K - 1, description="Skip this many results (paging)."
    )
    where: Where
    one_per: str | None = Field(
        default=None, max_length=64, description="At most one hit per value of this payload field."
    )
    fields: str | None = Field(
        default=None,
        max_length=1000,
        description="Comma-separated payload fields to return (default: all you may see).",
    )

    @model_validator(mode="after")
    def _window(self) -> SearchQuery:
        if self.offset + self.k > MAX_K:
            raise ValueError(f"offset + k must be at most {MAX_K}")
        if not self.q.strip():
            raise ValueError("q is blank")
        return self


class SimilarQuery(_Strict):
    """Query string of similar-image and search-by-image requests."""

    k: int = Field(default=10, ge=1, le=MAX_K)
    offset: int = Field(default=0, ge=0, le=MAX_K - 1)
    where: Where
    one_per: str | None = Field(default=None, max_length=64)
    fields: str | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _window(self) -> SimilarQuery:
        if self.offset + self.k > MAX_K:
            raise ValueError(f"offset + k must be at most {MAX_K}")
        return self


class ThumbnailQuery(_Strict):
    """Which thumbnail size."""

    size: int = Field(default=256, description="64, 128, 256 (made at ingest) or 512.")


class RecommendBody(_Strict):
    """Positive and negative examples (image ids)."""

    positive: list[ImageRef] = Field(min_length=1, max_length=64)
    negative: list[ImageRef] = Field(default_factory=list, max_length=64)
    k: int = Field(default=10, ge=1, le=MAX_K)
    where: Where
    one_per: str | None = Field(default=None, max_length=64)


class UrlsBody(_Strict):
    """URLs to download and ingest."""

    urls: list[Annotated[Text, Field(max_length=4096, pattern=URL_PATTERN)]] = Field(
        min_length=1, max_length=10_000
    )
    metadata: dict[str, Any] = Field(default_factory=dict, max_length=64)


class Hit(BaseModel):
    """One ranked image."""

    rank: int
    image_id: str
    score: float = Field(description="Cosine similarity (recommend: sum of similarities).")
    payload: dict[str, Any]


class Hits(BaseModel):
    """Ranked results."""

    results: list[Hit]
    next_offset: int | None = Field(
        default=None, description="offset of the next page, when there may be one."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="Filter fields no image has (a typo?): warned, not refused.",
    )


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


class TagOptions(_Strict):
    """Ad-hoc labels instead of the stored taxonomy (Hugging Face zero-shot style)."""

    candidate_labels: list[Label] | None = Field(
        default=None,
        max_length=100,
        description="Labels to score instead of the stored taxonomy.",
    )
    hypothesis_template: Text = Field(
        default="This is a photo of {}.",
        max_length=200,
        description="Prompt per candidate label; {} is replaced by the label.",
    )
    multi_label: bool = Field(
        default=False, description="Independent per-label probabilities instead of a softmax."
    )


class TagBody(TagOptions):
    """Tag a stored image or an image at a URL (multipart uploads send ``file`` instead)."""

    model_config = ConfigDict(json_schema_extra=_exactly_one("image_id", "url"))

    image_id: ImageRef | None = None
    url: Annotated[Text, Field(pattern=URL_PATTERN)] | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def _one_source(self) -> TagBody:
        if (self.image_id is None) == (self.url is None):
            raise ValueError("give exactly one of image_id or url (or upload a file)")
        return self


class LabelScore(BaseModel):
    """A label and its probability."""

    label: str
    score: float


class DimensionTags(BaseModel):
    """Every label of one dimension, best first, and those assigned."""

    name: str
    multi_label: bool
    labels: list[LabelScore]
    assigned: list[str]


class TagResponse(BaseModel):
    """Tags of one image."""

    taxonomy_version: str | None = Field(description="None for ad-hoc candidate labels.")
    ocr_text: str | None
    dimensions: list[DimensionTags]


class FormatQuery(_Strict):
    """Response format of the taxonomy export."""

    format: str = Field(default="json", pattern="^(json|yaml)$")


class RetagQuery(_Strict):
    """Whether replacing the taxonomy also re-tags the catalog."""

    retag: bool = True


class ServiceInfo(BaseModel):
    """The model this service embeds with and how many points each collection holds."""

    model_id: str
    vector_size: int
    family: str
    runtime: str = Field(description="torch, onnx or onnx-int8: what runs the model.")
    runtime_note: str | None = Field(
        default=None, description="Why the configured runtime is not the one running."
    )
    collections: dict[str, int]


class TaxonomyInfo(BaseModel):
    """The current taxonomy and its version (a content hash)."""

    version: str
    taxonomy: dict[str, Any]


class TaxonomyReplaced(BaseModel):
    """Answer to a taxonomy replacement."""

    version: str
    retag_job_id: str | None


class FlagOptions(_Strict):
    """Fields of a new flagged entry (multipart uploads send them as form fields)."""

    category: Text = Field(min_length=1, max_length=64, description="e.g. weapons, nudity.")
    threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Cosine that quarantines; default per category/kind.",
    )
    note: Text = Field(default="", max_length=2000)
    scan: bool = Field(default=True, description="Re-check the existing catalog against it.")


class FlagBody(FlagOptions):
    """Flag a stored image, an image URL, or a text concept."""

    model_config = ConfigDict(json_schema_extra=_exactly_one("image_id", "url", "text"))

    image_id: ImageRef | None = None
    url: Annotated[Text, Field(pattern=URL_PATTERN)] | None = Field(default=None, max_length=4096)
    text: Text | None = Field(
        default=None, min_length=1, max_length=300, description='e.g. "a photo of a weapon"'
    )

    @model_validator(mode="after")
    def _one_source(self) -> FlagBody:
        given = [v for v in (self.image_id, self.url, self.text) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of image_id, url or text (or upload a file)")
        return self


class FlagPatch(_Strict):
    """Changes to a flagged entry."""

    category: Text | None = Field(default=None, min_length=1, max_length=64)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    note: Text | None = Field(default=None, max_length=2000)


class FlaggedEntryOut(BaseModel):
    """One flagged entry."""

    id: str
    kind: str
    category: str
    source: str
    threshold: float | None
    note: str
    added_by: str
    added_at: str
    verifiable: bool = Field(
        default=False, description="Copies of this image verify by keypoints (image entries)."
    )


class FlagCreated(BaseModel):
    """A new entry, and the retroactive scan it started."""

    entry: FlaggedEntryOut
    scan_job_id: str | None


class FlaggedList(BaseModel):
    """The flagged set."""

    entries: list[FlaggedEntryOut]


class MatchOut(BaseModel):
    """Why an image resembles a flagged entry."""

    entry_id: str
    category: str
    kind: str
    score: float = Field(description="Cosine similarity to the entry.")
    threshold: float
    phash_distance: int | None = Field(description="Bits differing from the closest hash.")
    signal: str = Field(
        description=(
            "Which rule matched: exact, embedding, keypoints, keypoints+embedding, layout, "
            "layout+embedding, phash or phash+embedding."
        )
    )
    layout: float | None = Field(
        default=None,
        description="Share of colour-grid cells agreeing with the best-aligned crop or mirror "
        "of the flagged image, where it was computed.",
    )
    keypoints: int | None = Field(
        default=None,
        description="Keypoints of the image that agree with the flagged image under one "
        "rotation, scale and shift, where they were compared.",
    )
    keypoint_agreement: float | None = Field(
        default=None,
        description="Share of grid cells whose colour agrees once the image is laid over the "
        "flagged one by the keypoints' transform (a repeated pattern agrees by keypoints, "
        "not by pixels).",
    )


class VerdictOut(BaseModel):
    """The answer of ``/moderate``."""

    verdict: str = Field(description="quarantined or clear")
    category: str | None
    matches: list[MatchOut]


class ModerateBody(_Strict):
    """Check a stored image or an image URL (multipart uploads send ``file``)."""

    model_config = ConfigDict(json_schema_extra=_exactly_one("image_id", "url"))

    image_id: ImageRef | None = None
    url: Annotated[Text, Field(pattern=URL_PATTERN)] | None = Field(default=None, max_length=4096)

    @model_validator(mode="after")
    def _one_source(self) -> ModerateBody:
        if (self.image_id is None) == (self.url is None):
            raise ValueError("give exactly one of image_id or url (or upload a file)")
        return self


class QueueQuery(_Strict):
    """A page of the review queue."""

    limit: int = Field(default=50, ge=1, le=500)
    offset: Annotated[str | None, AfterValidator(_cursor)] = Field(
        default=None, max_length=64, pattern=UUID_PATTERN, description="next_offset of a page."
    )


class QueueItem(BaseModel):
    """A quarantined image with what it matched."""

    image_id: str
    payload: dict[str, Any]
    matches: list[MatchOut]


class ReviewQueue(BaseModel):
    """Quarantined images waiting for a decision."""

    pending: int
    items: list[QueueItem]
    next_offset: str | None


class DecisionBody(_Strict):
    """Approve or reject one or many quarantined images."""

    image_ids: list[ImageRef] = Field(min_length=1, max_length=500)
    action: str = Field(pattern="^(approve|reject)$")
    reason: Text | None = Field(default=None, max_length=2000)
    add_to_flagged: bool = Field(default=False, description="reject: flag the image too.")
    category: Text | None = Field(default=None, min_length=1, max_length=64)


class DecisionOut(BaseModel):
    """The outcome of one decision."""

    image_id: str
    action: str
    ok: bool
    message: str
    flagged_entry: str | None


class Decisions(BaseModel):
    """Outcomes, one per image."""

    results: list[DecisionOut]


class AuditQuery(_Strict):
    """Which audit events to read."""

    limit: int = Field(default=100, ge=1, le=1000)
    target: Text | None = Field(default=None, max_length=128)


class AuditEventOut(BaseModel):
    """One audit event."""

    id: str
    at: str
    actor: str
    action: str
    target: str
    reason: str | None
    details: dict[str, Any]


class AuditLogOut(BaseModel):
    """Audit events, newest first."""

    events: list[AuditEventOut]
