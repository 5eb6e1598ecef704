"""Events that travel through the queue. They carry ids, never image bytes.

The bytes are already in the content-addressed store when an event is published, so a
redelivered event finds them again and its upsert lands on the same point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
