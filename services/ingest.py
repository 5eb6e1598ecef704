"""Ingest: image bytes + metadata -> validated -> stored -> embedded in batches -> upserted.

Point ids derive from content, so re-ingesting the same bytes updates one point instead of
adding another, and an unchanged image is not embedded again.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from services.audit import AuditLog
from services.encoder import Encoder
from services.errors import InvalidImage, InvalidMetadata
from services.ids import point_id
from services.images import DecodedImage, decode_image
from services.index.base import PointData, VectorIndex
from services.moderation import FlaggedSet, audit_quarantines
from services.settings import ImageLimits
from services.store import ImageStore
from services.tagging import Tagger
from services.thumbnails import ThumbnailStore

# Payload keys the system writes; user metadata may not overwrite them.
RESERVED_KEYS = frozenset(
    {
        "image_id",
        "filename",
        "format",
        "width",
        "height",
        "bytes",
        "ingested_at",
        "tags",
        "tag_scores",
        "taxonomy_version",
        "moderation",
        "moderation_status",
        "phash",
    }
)
_VALIDATION_SIDE = 8
_MAX_META_KEYS = 64
_MAX_META_VALUE = 4096


class Outcome(StrEnum):
    """What happened to one item."""

    INDEXED = "indexed"
    UPDATED = "updated"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class IngestItem:
    """One upload: raw bytes and the caller's metadata."""

    data: bytes
    filename: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemResult:
    """The outcome for one item, with the reason when it was skipped or failed."""

    filename: str | None
    outcome: Outcome
    image_id: str | None = None
    reason: str | None = None


@dataclass
class IngestReport:
    """Counts and per-item results of an ingest run."""

    results: list[ItemResult] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        """How many items ended with this outcome."""
        return sum(1 for r in self.results if r.outcome is outcome)

    def summary(self) -> dict[str, int]:
        """Counts per outcome."""
        return {o.value: self.count(o) for o in Outcome}


def validate_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Check caller metadata is small, JSON-like and free of reserved keys.

    Raises:
        InvalidMetadata: naming the offending key.
    """
    if len(metadata) > _MAX_META_KEYS:
        raise InvalidMetadata(f"too many metadata keys ({len(metadata)} > {_MAX_META_KEYS})")
    clean: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > 64:
            raise InvalidMetadata(f"metadata key {key!r} must be a string of 1-64 characters")
        if key in RESERVED_KEYS:
            raise InvalidMetadata(f"metadata key {key!r} is reserved by Sightline")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and not isinstance(v, str | int | float | bool):
                raise InvalidMetadata(f"metadata {key!r}: values must be strings or numbers")
            if isinstance(v, float) and not math.isfinite(v):
                raise InvalidMetadata(f"metadata {key!r}: numbers must be finite")
            if isinstance(v, str) and len(v) > _MAX_META_VALUE:
                raise InvalidMetadata(f"metadata {key!r}: value longer than {_MAX_META_VALUE}")
        clean[key] = value
    return clean


@dataclass(frozen=True)
class _Prepared:
    item: IngestItem
    decoded: DecodedImage
    payload: dict[str, Any]


class Ingestor:
    """Turns uploads into indexed points."""

    def __init__(
        self,
        store: ImageStore,
        encoder: Encoder,
        index: VectorIndex,
        limits: ImageLimits,
        collection: str,
        batch_size: int = 32,
        thumbnails: ThumbnailStore | None = None,
        tagger: Tagger | None = None,
        moderator: FlaggedSet | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.moderator = moderator
        self.audit = audit
        self.thumbnails = thumbnails
        self.tagger = tagger
        self.store = store
        self.encoder = encoder
        self.index = index
        self.limits = limits
        self.collection = collection
        self.batch_size = batch_size

    def prepare(self, item: IngestItem, for_model: bool = True) -> _Prepared:
        """Validate one upload without writing anything.

        ``for_model=False`` only validates (publishers): the pixels are decoded at the
        smallest scale, which still reads and checks the whole stream.

        Raises:
            InvalidImage, InvalidMetadata: the item is refused.
        """
        metadata = validate_metadata(item.metadata)
        min_side = self.encoder.input_size if for_model else _VALIDATION_SIDE
        decoded = decode_image(item.data, self.limits, min_side=min_side)
        payload = {
            **metadata,
            "image_id": decoded.image_id,
            "filename": item.filename,
            "format": decoded.format,
            "width": decoded.width,
            "height": decoded.height,
            "bytes": decoded.size_bytes,
        }
        return _Prepared(item=item, decoded=decoded, payload=payload)

    def ingest(
        self,
        items: Iterable[IngestItem],
        on_result: Callable[[ItemResult], None] | None = None,
    ) -> IngestReport:
        """Ingest items in batches; bad items fail alone, with their reason."""
        report = IngestReport()
        for result in self.iter_ingest(items):
            report.results.append(result)
            if on_result is not None:
                on_result(result)
        return report

    def iter_ingest(self, items: Iterable[IngestItem]) -> Iterator[ItemResult]:
        """Like ``ingest`` but yields each result as its batch completes."""
        batch: list[IngestItem] = []
        for item in items:
            batch.append(item)
            if len(batch) >= self.batch_size:
                yield from self.ingest_batch(batch)
                batch = []
        if batch:
            yield from self.ingest_batch(batch)

    def ingest_batch(self, items: Sequence[IngestItem]) -> list[ItemResult]:
        """Validate, deduplicate, embed and upsert one batch."""
        results: list[ItemResult] = []
        ready: dict[str, _Prepared] = {}
        for item in items:
            try:
                prepared = self.prepare(item)
            except (InvalidImage, InvalidMetadata) as e:
                results.append(ItemResult(item.filename, Outcome.FAILED, reason=str(e)))
                continue
            image_id = prepared.decoded.image_id
            if image_id in ready:
                first = ready[image_id].item.filename
                results.append(
                    ItemResult(item.filename, Outcome.SKIPPED, image_id, f"same image as {first}")
                )
                continue
            ready[image_id] = prepared
        results.extend(self.commit(list(ready.values())))
        return results

    def commit(self, prepared: Sequence[_Prepared]) -> list[ItemResult]:
        """Write validated items: payload-only update for known images, embed the rest."""
        if not prepared:
            return []
        ids = {point_id(p.decoded.image_id): p for p in prepared}
        existing = {r.id: r for r in self.index.retrieve(self.collection, list(ids))}
        results: list[ItemResult] = []
        new: list[_Prepared] = []
        for pid, p in ids.items():
            record = existing.get(pid)
            if record is None:
                new.append(p)
                continue
            changes = {k: v for k, v in p.payload.items() if record.payload.get(k) != v}
            if not changes:
                results.append(
                    ItemResult(
                        p.item.filename, Outcome.SKIPPED, p.decoded.image_id, "already indexed"
                    )
                )
                continue
            self.index.set_payload(self.collection, [pid], changes)
            results.append(ItemResult(p.item.filename, Outcome.UPDATED, p.decoded.image_id))
        if new:
            vectors = self.encoder.encode_images([p.decoded.image for p in new])
            tags = (
                self.tagger.tag(vectors, [p.item.data for p in new])
                if self.tagger is not None
                else None
            )
            verdicts = (
                self.moderator.check_images([p.decoded.image for p in new], vectors)
                if self.moderator is not None
                else None
            )
            now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            points = []
            for n, (p, vector) in enumerate(zip(new, vectors, strict=True)):
                extra = tags[n].payload() if tags is not None else {}
                if verdicts is not None:
                    extra.update(verdicts[n].payload())
                self.store.put(p.item.data)
                if self.thumbnails is not None:
                    self.thumbnails.make(p.decoded.image_id, p.decoded.image)
                points.append(
                    PointData(
                        id=point_id(p.decoded.image_id),
                        vector=vector,
                        payload={**p.payload, **extra, "ingested_at": now},
                    )
                )
            self.index.upsert(self.collection, points)
            if verdicts is not None and self.audit is not None:
                audit_quarantines(
                    self.audit, "system:ingest", [p.decoded.image_id for p in new], verdicts
                )
            results.extend(
                ItemResult(p.item.filename, Outcome.INDEXED, p.decoded.image_id) for p in new
            )
        return results
