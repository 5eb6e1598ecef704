"""Content moderation by similarity to a flagged set, with a perceptual-hash backstop.

Three signals decide whether an image resembles a flagged entry:

- **Embedding**: cosine between the image and the entry's vector (an image's embedding,
  or a text concept's, e.g. "a photo of a weapon"), against the entry's threshold, else
  its category's, else the default for its kind (images and texts live at different
  cosine scales: CLIP's modality gap).
- **pHash** (image entries only): Hamming distance between the image's 64-bit DCT
  perceptual hash and the entry's. An entry stores the hashes of its image, its mirror
  image and eight crops, so flipped and cropped copies land near one of them.
- **Aligned colour layout** (image entries only, ``services.moderation.layout``): the share of a
  grid of mean colours that agrees between the image and the best-aligned crop or mirror
  of the entry's thumbnail. It is computed for the entries nearest by hash (distance at
  most ``phash_weak``) and those whose colour histograms share the most with the
  image's (at least ``colour_candidate``), at most ``layout_candidates`` of each.

An image is quarantined by an entry when the cosine reaches the threshold ("embedding");
or the aligned layout agrees on at least ``layout_threshold`` of its cells ("layout": a
copy, however cropped, captioned or mirrored); or the pHash distance is at most
``phash_strong`` ("phash"), or at most ``phash_weak`` with the cosine borderline
("phash+embedding"), where in both hash rules the layout, if it was computed, must agree
on at least ``layout_floor``: a hash collision between two different photos of similar
scenes is common, a collision whose colours also sit in the same places is not. The
embedding catches what is semantically the same but pixel-different; hash and layout
catch copies whose embedding moved.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageOps

from services.audit import AuditLog
from services.encoder import Encoder
from services.errors import InvalidFlag, NotFound
from services.images import decode_image
from services.index.base import PointData, Record, VectorIndex
from services.moderation.layout import (
    BINS,
    colour_histogram,
    decode_layout,
    encode_layout,
    layout_score,
    layout_thumbnail,
)
from services.payload import CLEAR, QUARANTINED
from services.settings import ImageLimits, ModerationSettings
from services.storage.files import ImageStore

# Crops (fraction removed) stored per flagged image, at each corner and the centre.
_CROPS = (0.08, 0.15)


class EntryKind(StrEnum):
    """What a flagged entry was made from."""

    IMAGE = "image"
    TEXT = "text"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash (imagehash.phash) as an integer."""
    return int(str(imagehash.phash(image.convert("RGB"))), 16)


def hash_variants(image: Image.Image) -> list[int]:
    """Hashes of an image, its mirror, and corner/centre crops of both."""
    out: list[int] = []
    for view in (image, ImageOps.mirror(image)):
        out.append(phash(view))
        w, h = view.size
        for f in _CROPS:
            cw, ch = round(w * (1 - f)), round(h * (1 - f))
            for x, y in ((0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)):
                out.append(phash(view.crop((x, y, x + cw, y + ch))))
    return sorted(set(out))


def hamming(a: int, b: np.ndarray) -> np.ndarray:
    """Bit differences between one hash and an array of hashes."""
    x = np.bitwise_xor(np.uint64(a), b.astype(np.uint64))
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


@dataclass(frozen=True)
class FlaggedEntry:
    """One entry of the flagged set (its vector stays in the index)."""

    id: str
    kind: EntryKind
    category: str
    source: str
    threshold: float | None = None
    note: str = ""
    added_by: str = ""
    added_at: str = ""
    phashes: list[str] = field(default_factory=list)
    thumbnail: str = ""  # a small JPEG data URI of a flagged image, for reviewers
    original: str = ""  # sha256 of the flagged image in the flagged originals store
    layout: str = ""  # colour thumbnail for the aligned-layout check (services.moderation.layout)

    def payload(self) -> dict[str, Any]:
        """What the ``flagged`` collection stores."""
        data = asdict(self)
        data["kind"] = self.kind.value
        return data

    @classmethod
    def from_record(cls, record: Record) -> FlaggedEntry:
        """Parse a stored point."""
        p = record.payload
        return cls(
            id=record.id,
            kind=EntryKind(p["kind"]),
            category=str(p["category"]),
            source=str(p.get("source", "")),
            threshold=p.get("threshold"),
            note=str(p.get("note", "")),
            added_by=str(p.get("added_by", "")),
            added_at=str(p.get("added_at", "")),
            phashes=list(p.get("phashes") or []),
            thumbnail=str(p.get("thumbnail", "")),
            original=str(p.get("original", "")),
            layout=str(p.get("layout", "")),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API (hashes left out: they are internal)."""
        data = self.payload()
        for internal in ("phashes", "thumbnail", "original", "layout"):
            data.pop(internal)
        return data


@dataclass(frozen=True)
class Match:
    """Why an image resembles one entry."""

    entry_id: str
    category: str
    kind: str
    score: float
    threshold: float
    phash_distance: int | None
    signal: str  # embedding | layout | phash | phash+embedding
    layout: float | None = None  # aligned-layout agreement, where it was computed

    def as_dict(self) -> dict[str, Any]:
        """JSON form, stored in the image payload and returned by the API."""
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one image."""

    quarantined: bool
    matches: list[Match]
    phash: int

    @property
    def category(self) -> str | None:
        """Category of the strongest match."""
        return self.matches[0].category if self.matches else None

    def payload(self) -> dict[str, Any]:
        """Fields written into an image's payload at ingest."""
        return {
            "moderation_status": QUARANTINED if self.quarantined else CLEAR,
            "moderation": {
                "matches": [m.as_dict() for m in self.matches],
                "checked_at": _now(),
                "approved_entries": [],
            },
            "phash": f"{self.phash:016x}",
        }

    def as_dict(self, with_matches: bool = True) -> dict[str, Any]:
        """JSON form for ``/moderate``; ``with_matches=False`` leaves out which entries
        matched and how closely (moderation internals, for admins only)."""
        return {
            "verdict": QUARANTINED if self.quarantined else CLEAR,
            "category": self.category,
            "matches": [m.as_dict() for m in self.matches] if with_matches else [],
        }


@dataclass(frozen=True)
class _Snapshot:
    entries: list[FlaggedEntry]
    vectors: np.ndarray  # (entries, dim)
    hashes: list[np.ndarray]  # per entry, uint64 (empty for text entries)
    taken: float
    layouts: list[np.ndarray | None] = field(default_factory=list)  # per entry, if any
    colours: np.ndarray | None = None  # (entries, bins) colour histograms, zero if no layout


class FlaggedSet:
    """The ``flagged`` collection: entries from images or text concepts, and checks."""

    def __init__(
        self,
        encoder: Encoder,
        index: VectorIndex,
        collection: str,
        policy: ModerationSettings,
        limits: ImageLimits,
        originals: ImageStore | None = None,
    ) -> None:
        self.originals = originals
        self.encoder = encoder
        self.index = index
        self.collection = collection
        self.policy = policy
        self.limits = limits
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    # -- the set --------------------------------------------------------------------------

    def _put(self, entry: FlaggedEntry, vector: np.ndarray) -> FlaggedEntry:
        self.index.upsert(self.collection, [PointData(entry.id, vector, entry.payload())])
        self._snapshot = None
        return entry

    def add_image(
        self,
        data: bytes,
        category: str,
        actor: str,
        source: str = "upload",
        threshold: float | None = None,
        note: str = "",
    ) -> FlaggedEntry:
        """Flag an image (its embedding and pHash variants).

        Raises:
            InvalidImage: the bytes are refused like any upload.
        """
        decoded = decode_image(data, self.limits)
        vector = self.encoder.encode_images([decoded.image])[0]
        # Kept apart from the catalog's originals (never ingested, never reconciled), so a
        # re-embed with another model can embed the entry again.
        original = self.originals.put(data) if self.originals is not None else ""
        entry = FlaggedEntry(
            id=str(uuid.uuid4()),
            kind=EntryKind.IMAGE,
            category=_category(category),
            source=source if source != "upload" else f"image:{decoded.image_id}",
            threshold=threshold,
            note=note,
            added_by=actor,
            added_at=_now(),
            phashes=[f"{h:016x}" for h in hash_variants(decoded.image)],
            thumbnail=_data_uri(decoded.image),
            original=original,
            layout=encode_layout(layout_thumbnail(decoded.image)),
        )
        return self._put(entry, vector)

    def add_text(
        self,
        text: str,
        category: str,
        actor: str,
        threshold: float | None = None,
        note: str = "",
    ) -> FlaggedEntry:
        """Flag a concept described in words."""
        if not text.strip():
            raise InvalidFlag("the concept text is empty")
        vector = self.encoder.encode_texts([text.strip()])[0]
        entry = FlaggedEntry(
            id=str(uuid.uuid4()),
            kind=EntryKind.TEXT,
            category=_category(category),
            source=text.strip(),
            threshold=threshold,
            note=note,
            added_by=actor,
            added_at=_now(),
        )
        return self._put(entry, vector)

    def get(self, entry_id: str) -> FlaggedEntry:
        """One entry.

        Raises:
            NotFound: no such entry.
        """
        try:
            entry_id = str(uuid.UUID(entry_id))
        except ValueError as e:
            raise NotFound(f"no flagged entry {entry_id!r}") from e
        records = self.index.retrieve(self.collection, [entry_id])
        if not records:
            raise NotFound(f"no flagged entry {entry_id!r}")
        return FlaggedEntry.from_record(records[0])

    def update(self, entry_id: str, **changes: Any) -> FlaggedEntry:
        """Change an entry's category, threshold or note."""
        self.get(entry_id)
        allowed = {k: v for k, v in changes.items() if k in ("category", "threshold", "note")}
        if "category" in allowed:
            allowed["category"] = _category(allowed["category"])
        self.index.set_payload(self.collection, [entry_id], allowed)
        self._snapshot = None
        return self.get(entry_id)

    def remove(self, entry_id: str) -> FlaggedEntry:
        """Delete an entry; images it quarantined stay quarantined until reviewed."""
        entry = self.get(entry_id)
        self.index.delete(self.collection, [entry_id])
        self._snapshot = None
        return entry

    def entries(self) -> list[FlaggedEntry]:
        """Every entry, oldest first."""
        return sorted(self.snapshot().entries, key=lambda e: (e.added_at, e.id))

    def snapshot(self, entry_ids: Sequence[str] | None = None) -> _Snapshot:
        """Entries with vectors and hashes; reused for ``cache_s`` seconds per process."""
        if entry_ids is not None:
            return self._build(self.index.retrieve(self.collection, list(entry_ids), True))
        snap = self._snapshot
        if snap is not None and time.monotonic() - snap.taken < self.policy.cache_s:
            return snap
        with self._lock:
            records: list[Record] = []
            offset: str | None = None
            while True:
                page, offset = self.index.scroll(
                    self.collection, limit=256, offset=offset, with_vectors=True
                )
                records += page
                if offset is None:
                    break
            self._snapshot = self._build(records)
            return self._snapshot

    def _build(self, records: Sequence[Record]) -> _Snapshot:
        entries = [FlaggedEntry.from_record(r) for r in records]
        size = self.encoder.identity.size
        vectors = (
            np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
            if records
            else np.zeros((0, size), dtype=np.float32)
        )
        hashes = [np.array([int(h, 16) for h in e.phashes], dtype=np.uint64) for e in entries]
        layouts = [decode_layout(e.layout) for e in entries]
        colours = (
            np.stack([colour_histogram(t) if t is not None else np.zeros(BINS**3) for t in layouts])
            if layouts
            else None
        )
        return _Snapshot(entries, vectors, hashes, time.monotonic(), layouts, colours)

    # -- checks ---------------------------------------------------------------------------

    def threshold(self, entry: FlaggedEntry) -> float:
        """The entry's own threshold, else its category's, else its kind's default."""
        if entry.threshold is not None:
            return float(entry.threshold)
        if entry.category in self.policy.category_thresholds:
            return float(self.policy.category_thresholds[entry.category])
        if entry.kind is EntryKind.IMAGE:
            return self.policy.image_threshold
        return self.policy.text_threshold

    def check(
        self,
        vectors: np.ndarray,
        hashes: Sequence[int],
        snapshot: _Snapshot | None = None,
        approved: Sequence[Sequence[str]] | None = None,
        layout_of: Callable[[int], np.ndarray | None] | None = None,
    ) -> list[Verdict]:
        """Verdicts for images given their vectors and pHashes.

        ``approved`` lists, per image, entries a reviewer already cleared it of.
        ``layout_of(i)`` gives image i's layout thumbnail when the caller has its pixels
        (called once per image while the set holds image entries with layouts); without
        it, or when it returns None, the layout signal is skipped.
        """
        snap = snapshot or self.snapshot()
        n = len(hashes)
        if not snap.entries:
            return [Verdict(False, [], hashes[i]) for i in range(n)]
        cos = np.asarray(vectors, dtype=np.float64).reshape(n, -1) @ snap.vectors.T.astype(
            np.float64
        )
        thresholds = [self.threshold(e) for e in snap.entries]
        verdicts = []
        for i in range(n):
            cleared = set(approved[i]) if approved is not None else set()
            dists = [int(hamming(hashes[i], h).min()) if len(h) else None for h in snap.hashes]
            layouts = self._layout_scores(i, dists, snap, cleared, layout_of)
            matches = []
            for j, entry in enumerate(snap.entries):
                if entry.id in cleared:
                    continue
                signal = self._signal(float(cos[i, j]), thresholds[j], dists[j], layouts.get(j))
                if signal is not None:
                    matches.append(
                        Match(
                            entry.id,
                            entry.category,
                            entry.kind.value,
                            float(cos[i, j]),
                            thresholds[j],
                            dists[j],
                            signal,
                            layouts.get(j),
                        )
                    )
            matches.sort(key=lambda m: (m.phash_distance is None, -m.score))
            verdicts.append(Verdict(bool(matches), matches, hashes[i]))
        return verdicts

    def _layout_scores(
        self,
        i: int,
        dists: list[int | None],
        snap: _Snapshot,
        cleared: set[str],
        layout_of: Callable[[int], np.ndarray | None] | None,
    ) -> dict[int, float]:
        """Aligned-layout scores of image i against two kinds of flagged image: those
        within ``phash_weak`` by hash (so the layout can confirm or refute the hash) and
        those whose colour histograms share the most with its own (at least
        ``colour_candidate``), at most ``layout_candidates`` of each."""
        p = self.policy
        if layout_of is None or p.layout_candidates == 0 or snap.colours is None:
            return {}
        usable = [
            j
            for j, layout in enumerate(snap.layouts)
            if layout is not None and snap.entries[j].id not in cleared
        ]
        near = sorted(
            (j for j in usable if (d := dists[j]) is not None and d <= p.phash_weak),
            key=lambda j: dists[j] or 0,
        )[: p.layout_candidates]
        image = layout_of(i) if usable else None
        if image is None:
            return {}
        shared = np.minimum(snap.colours, colour_histogram(image)[None, :]).sum(axis=1)
        alike = sorted(
            (j for j in usable if shared[j] >= p.colour_candidate), key=lambda j: -shared[j]
        )[: p.layout_candidates]
        out: dict[int, float] = {}
        for j in dict.fromkeys([*near, *alike]):
            flagged = snap.layouts[j]
            assert flagged is not None
            out[j] = round(layout_score(image, flagged), 4)
        return out

    def _signal(
        self, score: float, threshold: float, dist: int | None, layout: float | None
    ) -> str | None:
        """Which rule, if any, makes one image match one entry (module docstring)."""
        p = self.policy
        if score >= threshold:
            return "embedding"
        if layout is not None and layout >= p.layout_threshold:
            return "layout"
        if dist is None or (layout is not None and layout < p.layout_floor):
            return None
        if dist <= p.phash_strong:
            return "phash"
        if dist <= p.phash_weak and score >= threshold - p.borderline_margin:
            return "phash+embedding"
        return None

    def check_images(self, images: Sequence[Image.Image], vectors: np.ndarray) -> list[Verdict]:
        """Verdicts for decoded images with their vectors (ingest)."""
        return self.check(
            vectors,
            [phash(im) for im in images],
            layout_of=lambda i: layout_thumbnail(images[i]),
        )

    def check_bytes(self, data: bytes) -> Verdict:
        """Check an image that is not stored (``/moderate``).

        Raises:
            InvalidImage: refused like any upload.
        """
        decoded = decode_image(data, self.limits, min_side=self.encoder.input_size)
        vector = self.encoder.encode_images([decoded.image])[0]
        thumbnail = layout_thumbnail(decoded.image)
        return self.check(vector[None, :], [phash(decoded.image)], layout_of=lambda _: thumbnail)[0]


def audit_quarantines(
    audit: AuditLog, actor: str, image_ids: Sequence[str], verdicts: Sequence[Verdict]
) -> None:
    """Write one audit event per automatic quarantine (at ingest or by a scan)."""
    for image_id, verdict in zip(image_ids, verdicts, strict=True):
        if verdict.quarantined:
            audit.record(
                actor,
                "image.quarantine",
                image_id,
                f"resembles flagged {verdict.category}",
                {"matches": [m.as_dict() for m in verdict.matches]},
            )


def _data_uri(image: Image.Image, side: int = 96) -> str:
    small = image.convert("RGB")
    small.thumbnail((side, side))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _category(value: Any) -> str:
    text = str(value or "").strip()
    if not text or len(text) > 64:
        raise InvalidFlag("category must be 1-64 characters")
    return text
