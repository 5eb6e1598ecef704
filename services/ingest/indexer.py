"""Indexing: validated, stored images -> embedded in batches, tagged, moderated -> upserted.

Point ids derive from content, so indexing the same bytes again updates one point instead
of adding another, and an unchanged image is not embedded again. ``Indexer`` writes the
index only: the original is stored once, before it is indexed, by whoever accepted it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from services.audit import AuditLog
from services.auth.principal import Principal, Scope
from services.encoder import Encoder
from services.errors import InvalidImage, InvalidMetadata, SightlineError
from services.ids import point_id
from services.index.base import PointData, VectorIndex
from services.ingest.intake import IngestItem, Prepared, prepare
from services.moderation.flagged import FlaggedSet, audit_quarantines
from services.settings import ImageLimits
from services.storage.files import ImageStore
from services.storage.thumbnails import ThumbnailStore
from services.tagging.scoring import Tagger

# Thumbnail writes in flight per chunk: enough to hide an object store's latency.
IO_THREADS = 4


class Outcome(StrEnum):
    """What happened to one item."""

    INDEXED = "indexed"
    UPDATED = "updated"
    SKIPPED = "skipped"
    FAILED = "failed"


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


class Indexer:
    """Embeds, tags and moderates stored images and upserts their points."""

    def __init__(
        self,
        encoder: Encoder,
        index: VectorIndex,
        collection: str,
        thumbnails: ThumbnailStore | None = None,
        tagger: Tagger | None = None,
        moderator: FlaggedSet | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.encoder = encoder
        self.index = index
        self.collection = collection
        self.thumbnails = thumbnails
        self.tagger = tagger
        self.moderator = moderator
        self.audit = audit

    @property
    def decode_side(self) -> int | None:
        """The shorter side images are decoded at: the model's input size, whatever else
        is on, so that one image's vector does not depend on settings (re-embed and
        search-by-image decode the same way). Moderation's pixel signals, which need
        more, decode the original again, and only while image entries are flagged."""
        return self.encoder.input_size

    def commit(self, prepared: Sequence[Prepared]) -> list[ItemResult]:
        """Index validated items: payload-only update for known images, embed the rest."""
        if not prepared:
            return []
        ids = {point_id(p.image_id): p for p in prepared}
        existing = {r.id: r for r in self.index.retrieve(self.collection, list(ids))}
        results: list[ItemResult] = []
        new: list[Prepared] = []
        for pid, p in ids.items():
            record = existing.get(pid)
            if record is None:
                new.append(p)
                continue
            changes = {k: v for k, v in p.payload.items() if record.payload.get(k) != v}
            if not changes:
                results.append(
                    ItemResult(p.item.filename, Outcome.SKIPPED, p.image_id, "already indexed")
                )
                continue
            self.index.set_payload(self.collection, [pid], changes)
            results.append(ItemResult(p.item.filename, Outcome.UPDATED, p.image_id))
        if new:
            self._embed_new(new)
            results.extend(ItemResult(p.item.filename, Outcome.INDEXED, p.image_id) for p in new)
        return results

    def ready(self, prepared: Sequence[Prepared]) -> list[Prepared]:
        """The same items with their model inputs and thumbnails made: the work on an
        image that needs neither the model nor the index, which a pipeline does on its
        decode thread while the model embeds the previous batch (on 2 cores that is
        most of what the worker adds to the model's own batched encode)."""
        if not prepared:
            return []
        inputs = self.encoder.preprocess_images([p.decoded.image for p in prepared])
        out = []
        for n, p in enumerate(prepared):
            thumbnail = (
                self.thumbnails.render(p.decoded.image) if self.thumbnails is not None else None
            )
            model_input = inputs[n] if inputs is not None else None
            out.append(replace(p, model_input=model_input, thumbnail=thumbnail))
        return out

    def _vectors(self, new: Sequence[Prepared]) -> np.ndarray:
        inputs = [p.model_input for p in new]
        if all(x is not None for x in inputs):
            return self.encoder.encode_preprocessed([x for x in inputs if x is not None])
        return self.encoder.encode_images([p.decoded.image for p in new])

    def _embed_new(self, new: Sequence[Prepared]) -> None:
        # Thumbnails are written on I/O threads while the model embeds: on the model's
        # thread each write costs an fsync (about 1 ms on local disk) or an object store's
        # round trip. Any not rendered yet (the decode thread renders most) are rendered
        # here, not on those threads, where the work would take the model's cores. They
        # are written before the points that show them, and the ones written are removed
        # again if anything before the upsert fails.
        thumbnails = self.thumbnails
        renders = (
            [p.thumbnail or ThumbnailStore.render(p.decoded.image) for p in new]
            if thumbnails is not None
            else []
        )
        with ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="thumbnails") as io:
            written = (
                [
                    io.submit(thumbnails.put, p.image_id, data)
                    for p, data in zip(new, renders, strict=True)
                ]
                if thumbnails is not None
                else []
            )
            try:
                vectors = self._vectors(new)
                tags = (
                    self.tagger.tag(vectors, [p.item.data for p in new])
                    if self.tagger is not None
                    else None
                )
                verdicts = (
                    self.moderator.check_uploads(
                        [p.item.data for p in new], vectors, [p.image_id for p in new]
                    )
                    if self.moderator is not None
                    else None
                )
                for done in written:
                    done.result()
            except BaseException:
                wait(written)
                if thumbnails is not None:
                    for p, done in zip(new, written, strict=True):
                        if done.exception() is None:
                            with contextlib.suppress(SightlineError):
                                thumbnails.discard(p.image_id)
                raise
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        points = []
        for n, (p, vector) in enumerate(zip(new, vectors, strict=True)):
            extra = tags[n].payload() if tags is not None else {}
            if verdicts is not None:
                extra.update(verdicts[n].payload())
            points.append(
                PointData(
                    id=point_id(p.image_id),
                    vector=vector,
                    payload={**p.payload, **extra, "ingested_at": now},
                )
            )
        self.index.upsert(self.collection, points)
        if verdicts is not None and self.audit is not None:
            audit_quarantines(self.audit, "system:ingest", [p.image_id for p in new], verdicts)


class Ingestor:
    """Synchronous ingest in the calling process (CLI, demo, benchmarks): validate, store
    the original, index, audit; bad items fail alone, with their reason."""

    def __init__(
        self,
        store: ImageStore,
        indexer: Indexer,
        limits: ImageLimits,
        audit: AuditLog,
        batch_size: int = 32,
    ) -> None:
        self.store = store
        self.indexer = indexer
        self.limits = limits
        self.audit = audit
        self.batch_size = batch_size

    def ingest(
        self,
        caller: Principal,
        items: Iterable[IngestItem],
        on_result: Callable[[ItemResult], None] | None = None,
    ) -> IngestReport:
        """Ingest items in batches; returns every item's outcome."""
        report = IngestReport()
        for result in self.iter_ingest(caller, items):
            report.results.append(result)
            if on_result is not None:
                on_result(result)
        return report

    def iter_ingest(self, caller: Principal, items: Iterable[IngestItem]) -> Iterator[ItemResult]:
        """Like ``ingest`` but yields each result as its batch completes."""
        caller.require(Scope.INGEST)
        batch: list[IngestItem] = []
        for item in items:
            batch.append(item)
            if len(batch) >= self.batch_size:
                yield from self._batch(caller, batch)
                batch = []
        if batch:
            yield from self._batch(caller, batch)

    def _batch(self, caller: Principal, items: Sequence[IngestItem]) -> list[ItemResult]:
        results: list[ItemResult] = []
        ready: dict[str, Prepared] = {}
        for item in items:
            try:
                prepared = prepare(item, self.limits, self.indexer.decode_side)
            except (InvalidImage, InvalidMetadata) as e:
                results.append(ItemResult(item.filename, Outcome.FAILED, reason=str(e)))
                continue
            first = ready.get(prepared.image_id)
            if first is not None:
                results.append(
                    ItemResult(
                        item.filename,
                        Outcome.SKIPPED,
                        prepared.image_id,
                        f"same image as {first.item.filename}",
                    )
                )
                continue
            ready[prepared.image_id] = prepared
        for p in ready.values():
            self.store.put(p.item.data)
        committed = self.indexer.commit(list(ready.values()))
        self.audit.record_many(
            caller.name,
            "image.upload",
            [
                (r.image_id, None, {"filename": r.filename, "outcome": r.outcome.value})
                for r in committed
                if r.image_id and r.outcome in (Outcome.INDEXED, Outcome.UPDATED)
            ],
        )
        return results + committed
