"""Events that travel through the queue. They carry ids, never image bytes.

The bytes are already in the content-addressed store when an event is published, so a
redelivered event finds them again and its upsert lands on the same point. Parsing is
strict: a message of the wrong shape is refused as a whole (and dead-lettered by the
worker) rather than half-understood.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from services.errors import InvalidInput

E = TypeVar("E")


def _parse(cls: type[E], data: Any) -> E:
    if not isinstance(data, dict):
        raise InvalidInput(f"malformed {cls.__name__}: not an object")
    unknown = set(data) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise InvalidInput(f"malformed {cls.__name__}: unknown keys {sorted(map(str, unknown))}")
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in d['loc']) or 'event'}: {d['msg']}" for d in e.errors()
        )
        raise InvalidInput(f"malformed {cls.__name__}: {problems}") from e


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
    def from_dict(cls, data: Any) -> IngestEvent:
        """Parse what ``to_dict`` produced.

        Raises:
            InvalidInput: anything else (missing or renamed keys, wrong types).
        """
        return _parse(cls, data)


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
    def from_dict(cls, data: Any) -> FetchEvent:
        """Parse what ``to_dict`` produced.

        Raises:
            InvalidInput: anything else.
        """
        return _parse(cls, data)
