"""Events that travel through the queue. They carry ids, never image bytes.

The bytes are already in the content-addressed store when an event is published, so a
redelivered event finds them again and its upsert lands on the same point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class IngestEvent:
    """``image.uploaded``: a stored image to decode, embed and upsert."""

    job_id: str
    item: str
    image_id: str
    filename: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0
    round: str = ""  # a manual retry starts a new round with a fresh delivery budget

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for the broker."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IngestEvent:
        """Parse what ``to_dict`` produced."""
        return cls(**data)


@dataclass(frozen=True)
class FetchEvent:
    """``image.url_submitted``: a URL to download, validate, store, then ingest."""

    job_id: str
    url: str
    metadata: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for the broker."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FetchEvent:
        """Parse what ``to_dict`` produced."""
        return cls(**data)


class Dispatcher(Protocol):
    """Publishes work; implemented by the Celery queue and by the in-process queue."""

    def ingest(self, events: Sequence[IngestEvent], delay_s: float = 0.0) -> None:
        """Publish image.uploaded events (optionally after a delay, for retries)."""

    def fetch(self, events: Sequence[FetchEvent], delay_s: float = 0.0) -> None:
        """Publish URL downloads."""

    def bulk_folder(self, job_id: str, path: str, metadata: dict[str, dict[str, Any]]) -> None:
        """Publish a bulk job over a folder the workers can read."""

    def delete(self, job_id: str, image_ids: Sequence[str]) -> None:
        """Publish a deletion."""

    def reembed(self, job_id: str, model: str, prefix: str, switch: bool) -> None:
        """Publish a re-embed of the catalog with another model."""

    def retag(self, job_id: str) -> None:
        """Publish a re-tag of the catalog with the current taxonomy."""

    def scan_flagged(self, job_id: str, entry_ids: Sequence[str] | None) -> None:
        """Publish a retroactive moderation scan of the catalog."""
