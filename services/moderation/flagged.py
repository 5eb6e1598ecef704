"""Content moderation by similarity to a flagged set.

Signals decide whether an image resembles a flagged entry:

- **Embedding**: cosine between the image and the entry's vector (an image's embedding,
  or a text concept's, e.g. "a photo of a weapon"), against the entry's threshold, else
  its category's, else the default for its kind (images and texts live at different
  cosine scales: CLIP's modality gap). It catches what means the same but looks
  different.
- **Pixels** (image entries), all taken of the content (``services.moderation.content``:
  uniform borders, padding and captions beside the object trimmed, brightness and
  contrast normalised):
  - **keypoints** (``services.moderation.keypoints``): ORB features matched and checked
    for one consistent rotation + scale + shift; the count of agreeing keypoints
    (inliers), and the share of a colour grid that agrees once the image is laid over
    the entry by that transform (``layout.warped_agreement``). A copy keeps hundreds and
    agrees on nearly all the grid; two different objects or textures keep a handful, and
    renders of one repeated pattern, which keep dozens, disagree on the pixels. Views: the
    entry's content and its mirror, and for the likeliest entries (or where the contents
    agree in part) the whole frames.
  - **aligned layout** (``services.moderation.layout``): the share of content cells of a
    colour grid that agree with the best-aligned crop or mirror of the entry (or the
    entry with a crop of the image); background cells carry no evidence and a layout
    without structure cannot match.
  - **pHash** of the content: Hamming distance to the entry's hashes (its content, mirror
    and crops).

An image matches an entry when its bytes are a flagged original's ("exact"); when the
cosine reaches the threshold ("embedding"); or, for an
entry whose copies verify by keypoints (checked when it is added: ``verifiable``), when
``keypoint_threshold`` keypoints agree and the pixels under their transform agree on
``keypoint_agreement_floor``, or ``keypoint_floor`` keypoints agree and the pixels on
``keypoint_agreement_threshold`` ("keypoints"; for an entry that is not verifiable,
whose keypoints are kept to confirm and never refute, ``keypoint_threshold`` of them on
pixels that agree on ``keypoint_agreement_threshold``, with a borderline cosine:
"keypoints+embedding"); or when the layout agrees on at
least ``layout_threshold`` ("layout"; for an entry that is not verifiable, only with
``keypoint_threshold`` of its kept keypoints agreeing, or else with a borderline cosine:
"layout+embedding"), or the pHash distance is at most ``phash_strong``
("phash") or at most ``phash_weak`` with a borderline cosine ("phash+embedding") — the
hash rules only where the layout was compared and reaches ``layout_floor`` (or, in a
scan whose original is gone, on the stored hash alone). For a verifiable entry the
layout and hash rules also need ``keypoint_floor`` agreeing keypoints whose transform
lays agreeing pixels over the entry: a layout or hash coincidence between two different
pictures is common, one their keypoints confirm is not; for an entry that is not
verifiable, its kept keypoints refuse them where the pixels under their transform agree
on less than ``keypoint_agreement_floor``. Pixels agree only where the object and, in a
whole frame, its backdrop each agree in part (``layout.PART_FLOOR``): renders cut from
one template in another colour, or (compared by frames) on another backdrop, are other
pictures. Fewer than ``keypoint_threshold``
agreeing keypoints are refused where the aligned layouts disagree (under
``layout_veto``): a few glyphs of one typeface agree between any two posters. An image
with too little content (a uniform colour, a texture) cannot match by layout or hash at
all.

Cost: the embedding is one matrix product; keypoint votes are one approximate
nearest-neighbour pass (an inverted file); layouts are aligned, and keypoints verified,
only for the few candidate entries, dearest last.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

import faiss
import imagehash
import numpy as np
from PIL import Image, ImageOps

from services.audit import AuditLog
from services.encoder import Encoder
from services.errors import InvalidFlag, InvalidImage, NotFound
from services.ids import sha256_hex
from services.images import decode_image
from services.index.base import PointData, Record, VectorIndex
from services.moderation.content import PIXEL_SIDE, Content, content, unpadded
from services.moderation.keypoints import Features, Geometric, geometric, self_test
from services.moderation.keypoints import features as keypoint_features
from services.moderation.layout import (
    BINS,
    Prepared,
    colour_histogram,
    decode_layout,
    encode_layout,
    layout_score,
    layout_thumbnail,
    prepare,
    warped_agreement,
)
from services.payload import CLEAR, QUARANTINED
from services.settings import ImageLimits, ModerationSettings
from services.storage.files import ImageStore

# Crops (fraction removed) stored per flagged image, at each corner and the centre.
_CROPS = (0.08, 0.15)
# Keypoint votes: a query keypoint votes for the entry of its nearest stored descriptor
# when they differ in at most VOTE_DISTANCE bits; an entry needs MIN_VOTES to be compared.
VOTE_DISTANCE = 40
MIN_VOTES = 8
# An inverted file over the stored descriptors (faiss's binary IVF): each query keypoint
# scans the few lists nearest it, contiguous in memory. OpenCV's LSH, used before,
# found 0.83-0.87 of the nearest descriptors within VOTE_DISTANCE and cost 9 ms a check
# over a hundred entries (its hash buckets are scattered, and each check's other work
# evicts them); the lists find 0.99 for ~2.5 ms (bench/moderation.py). The lists are
# trained (k-means) whenever the set changes, before the next check: on a sample of
# VOTE_TRAIN_PER_LIST descriptors a list and at most VOTE_LISTS of them, so that costs
# under a second however large the set (faiss's default sample, 256 a list with a list
# per 300 descriptors, took 6 s for a hundred entries and 49 s for three hundred).
VOTE_LIST_SIZE = 300  # descriptors per list, about, up to VOTE_LISTS lists
VOTE_LISTS = 512
VOTE_TRAIN_PER_LIST = 40
VOTE_PROBES = 8  # lists scanned per query keypoint
# How entries' pixel fields are made; older entries are made again from their originals
# when a process first reads them (2: hue-preserving normalisation, feature sizes, frames;
# 3: the keypoints of entries that do not verify, kept to confirm; 4: a rotation's filled
# corners painted in the canvas's colour before trimming; 5: only the corner triangles;
# 6: the corner fills of turns that kept the picture's size; 7: keypoints spread over
# the picture, banners across a canvas's edge trimmed; 8: content from 96 px verified,
# a trimmed frame's sliver taken off, strips across a canvas left out of the box).
PIXELS_VERSION = 8
VOTERS = 300  # about this many of a query's keypoints vote (a copy's win by dozens)
VIEWS = 4  # voting views per entry: content, its mirror, frame, the frame's mirror
# An entry's mirror view is matched after the entry itself falls short only when the
# query's keypoints gave the mirror this many votes: a mirrored copy gives it dozens.
MIN_VIEW_VOTES = 2
# A cosine computed from float32 vectors is off by a few ulps: an image's own copy scores
# 0.99999997 against itself, so a threshold of 1.0 means "the same vector" only with this.
COSINE_ROUNDING = 1e-6
# A query's picture inside its flat padding is a view of its own (after the whole frame)
# when it is this many times the content's area (the content box cut into a photo).
UNPADDED_GAIN = 2.0


class EntryKind(StrEnum):
    """What a flagged entry was made from."""

    IMAGE = "image"
    TEXT = "text"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def phash(image: Image.Image) -> int:
    """64-bit DCT perceptual hash (imagehash.phash) as an integer."""
    return int(str(imagehash.phash(image.convert("RGB"))), 16)


def content_hash(image: Image.Image) -> int | None:
    """pHash of an image's content (borders trimmed); None when it has no content."""
    found = content(image)
    return phash(found.image) if found is not None else None


def hash_variants(found: Content) -> list[int]:
    """Hashes of an image's content, its mirror, and corner/centre crops of both."""
    out: list[int] = []
    for view in (found.image, ImageOps.mirror(found.image)):
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
    keypoints: str = ""  # ORB features of the content (services.moderation.keypoints)
    keypoints_mirror: str = ""  # and of its mirror image
    # Of the whole frame, when the content was trimmed out of it: a caption across the
    # object or a crop into the backdrop moves the content box, not the frame.
    keypoints_frame: str = ""
    keypoints_frame_mirror: str = ""
    layout_frame: str = ""
    verifiable: bool = False  # a degraded copy verified by keypoints when it was added
    pixels_version: int = 0  # how the pixel fields were made (PIXELS_VERSION)

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
            keypoints=str(p.get("keypoints", "")),
            keypoints_mirror=str(p.get("keypoints_mirror", "")),
            keypoints_frame=str(p.get("keypoints_frame", "")),
            keypoints_frame_mirror=str(p.get("keypoints_frame_mirror", "")),
            layout_frame=str(p.get("layout_frame", "")),
            verifiable=bool(p.get("verifiable", False)),
            pixels_version=int(p.get("pixels_version", 0) or 0),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API (hashes left out: they are internal)."""
        data = self.payload()
        for internal in (
            "phashes",
            "thumbnail",
            "original",
            "layout",
            "keypoints",
            "keypoints_mirror",
            "keypoints_frame",
            "keypoints_frame_mirror",
            "layout_frame",
        ):
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
    # exact | embedding | keypoints | keypoints+embedding | layout | layout+embedding | phash |
    # phash+embedding
    signal: str
    layout: float | None = None  # aligned-layout agreement, where it was computed
    keypoints: int | None = None  # agreeing keypoints (inliers), where they were compared
    # Share of cells that agree with the image laid over by the keypoints' transform.
    keypoint_agreement: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form, stored in the image payload and returned by the API."""
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one image."""

    quarantined: bool
    matches: list[Match]
    phash: int | None  # of the image's content; None when it has none

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
            "phash": f"{self.phash:016x}" if self.phash is not None else None,
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
    layouts: list[Prepared | None] = field(default_factory=list)  # per entry, if any
    colours: np.ndarray | None = None  # (entries, bins) colour histograms, zero if no layout
    # Per entry: keypoint features of its content and of its mirror, when stored.
    features: list[tuple[Features | None, Features | None] | None] = field(default_factory=list)
    # Per entry: its whole frame's features, its mirror's, and its layout thumbnail, when
    # it was trimmed.
    frames: list[_Frame | None] = field(default_factory=list)
    # Per entry: whether its keypoints may refute (its copies verify), not only confirm.
    refutes: list[bool] = field(default_factory=list)
    # Every entry's stored descriptors in one approximate nearest-neighbour index, and
    # which entry each belongs to: one pass finds which entries a query's keypoints vote
    # for, at a cost that grows slower than the set.
    vote_index: Any = None
    vote_owners: np.ndarray | None = None


@dataclass
class Pixels:
    """What a query image's pixels say (of its content), computed once and only when a
    signal needs it."""

    phash: int | None = None
    layout: np.ndarray | None = None
    features: Features | None = None
    colours: np.ndarray | None = None
    _prepared: Prepared | None = field(default=None, repr=False, compare=False)
    # The whole decoded frame when the content was trimmed out of it (None: it was not).
    frame: Image.Image | None = field(default=None, repr=False, compare=False)
    _frame_view: tuple[Features | None, np.ndarray | None] | None = field(
        default=None, repr=False, compare=False
    )
    # The picture inside the frame's flat padding, where the content is too small to
    # verify and that picture holds much more (None: no such picture).
    inner: Image.Image | None = field(default=None, repr=False, compare=False)
    _inner_view: tuple[Features | None, np.ndarray | None] | None = field(
        default=None, repr=False, compare=False
    )
    # The content was trimmed from a frame barely one colour: its copies may be left
    # whole, and so may the entry it copies (``content.BARELY``).
    barely: bool = False

    def frame_view(self) -> tuple[Features | None, np.ndarray | None]:
        """Keypoints and layout thumbnail of the whole frame (once; the content's own when
        nothing was trimmed)."""
        if self._frame_view is None:
            if self.frame is None:
                self._frame_view = (self.features, self.layout)
            else:
                whole = Content(self.frame, None)
                self._frame_view = (keypoint_features(whole), layout_thumbnail(whole))
        return self._frame_view

    def inner_view(self) -> tuple[Features | None, np.ndarray | None]:
        """Keypoints and layout thumbnail of ``inner`` (once; (None, None) without one)."""
        if self._inner_view is None:
            if self.inner is None:
                self._inner_view = (None, None)
            else:
                picture = Content(self.inner, None)
                self._inner_view = (keypoint_features(picture), layout_thumbnail(picture))
        return self._inner_view

    def prepared(self) -> Prepared | None:
        """The layout made ready for alignment (once, for every entry it is aligned to)."""
        if self._prepared is None and self.layout is not None:
            self._prepared = prepare(self.layout)
        return self._prepared

    @classmethod
    def of(cls, image: Image.Image) -> Pixels:
        """Hash, layout and keypoints of a decoded image (all None: no content)."""
        found = content(image)
        if found is None:
            return cls()
        layout = layout_thumbnail(found)
        features = keypoint_features(found)
        frame = inner = None
        if found.background is not None:
            # The whole picture, a rotation's fill painted as the content was.
            frame = found.unfilled or image.convert("RGB")
            if features is None:
                # Content too small to verify may be what stood out of a photo's backdrop
                # that matched its padding (a grey wall padded in grey): the picture inside
                # the padding is then a view of its own, after the whole frame.
                inside = unpadded(frame)
                w, h = found.image.size
                if inside.size != frame.size and inside.width * inside.height >= (
                    UNPADDED_GAIN * w * h
                ):
                    inner = inside
        return cls(
            phash(found.image),
            layout,
            features,
            colour_histogram(layout),
            frame=frame,
            inner=inner,
            barely=found.barely,
        )


@dataclass(frozen=True)
class _Frame:
    """An entry's whole frame as a keypoint view: features, its mirror's, its layout."""

    features: Features
    mirror: Features | None
    layout: np.ndarray


@dataclass(frozen=True)
class _EntryPixels:
    """An entry's pixel data, decoded from its payload for checks."""

    hashes: np.ndarray  # uint64
    layout: Prepared | None
    colours: np.ndarray
    features: tuple[Features | None, Features | None] | None  # when stored
    frame: _Frame | None = None  # when stored (the content was trimmed)
    # Whether its copies verify, so its keypoints may refute as well as confirm.
    refutes: bool = False


def _parts(entry: FlaggedEntry) -> _EntryPixels:
    thumbnail = decode_layout(entry.layout)
    frame_features = Features.decode(entry.keypoints_frame)
    frame_layout = decode_layout(entry.layout_frame)
    frame = (
        _Frame(frame_features, Features.decode(entry.keypoints_frame_mirror), frame_layout)
        if frame_features is not None and frame_layout is not None
        else None
    )
    return _EntryPixels(
        np.array([int(h, 16) for h in entry.phashes], dtype=np.uint64),
        prepare(thumbnail) if thumbnail is not None else None,
        colour_histogram(thumbnail) if thumbnail is not None else np.zeros(BINS**3),
        (Features.decode(entry.keypoints), Features.decode(entry.keypoints_mirror))
        if entry.keypoints
        else None,
        frame,
        entry.verifiable,
    )


def _voting_views(parts: _EntryPixels) -> tuple[Features | None, ...] | None:
    """The views a query's keypoints vote for (``VIEWS`` of them, None where absent): the
    entry's content and its mirror, and its whole frame and the frame's mirror. A copy
    whose content box moved (corners a rotation filled with another colour, a frame
    around the canvas, a caption that joined the object) keeps the frame's scale, not
    the content's, and its keypoints vote for the frame; an entry whose frame alone
    verifies (a flat render) gets votes only there."""
    content = parts.features or (None, None)
    frame = (parts.frame.features, parts.frame.mirror) if parts.frame is not None else (None, None)
    views = (*content, *frame)
    return views if any(view is not None for view in views) else None


def _vote_index(
    features: Sequence[tuple[Features | None, ...] | None],
) -> tuple[Any, np.ndarray | None]:
    """An inverted-file index over every entry's voting descriptors, and each one's owner:
    ``VIEWS * entry + view`` (views as ``_voting_views`` gives them). Its lists are
    trained by k-means from a fixed seed on one thread, so every process builds the same
    lists for one flagged set and votes alike."""
    codes, owners = vote_codes(features)
    if owners is None:
        return None, None
    lists = min(VOTE_LISTS, max(1, len(codes) // VOTE_LIST_SIZE))
    faiss.omp_set_num_threads(1)
    bits = codes.shape[1] * 8
    index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, lists)
    index.cp.max_points_per_centroid = VOTE_TRAIN_PER_LIST
    index.train(codes)  # k-means on a sample drawn from faiss's fixed seed
    index.add(codes)
    index.nprobe = min(VOTE_PROBES, lists)
    return index, owners


def vote_codes(
    features: Sequence[tuple[Features | None, ...] | None],
) -> tuple[np.ndarray, np.ndarray | None]:
    """Every entry's voting descriptors stacked, and each one's owner (None: none)."""
    stacked = [
        (f.descriptors, np.full(len(f), VIEWS * j + view))
        for j, views in enumerate(features)
        if views is not None
        for view, f in enumerate(views)
        if f is not None
    ]
    if not stacked:
        return np.zeros((0, 32), np.uint8), None
    codes = np.ascontiguousarray(np.concatenate([d for d, _ in stacked]), dtype=np.uint8)
    return codes, np.concatenate([o for _, o in stacked])


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
        self._parts: dict[str, _EntryPixels] = {}
        self._votes: tuple[Any, Any, np.ndarray | None] | None = None

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
        vector = self.encoder.encode_images([self._model_input(data, decoded.image)])[0]
        # Kept apart from the catalog's originals (never ingested, never reconciled), so a
        # re-embed with another model can embed the entry again.
        original = self.originals.put(data) if self.originals is not None else ""
        pixels = entry_pixels(decoded.image, self.policy.keypoint_threshold)
        entry = FlaggedEntry(
            id=str(uuid.uuid4()),
            kind=EntryKind.IMAGE,
            category=_category(category),
            source=source if source != "upload" else f"image:{decoded.image_id}",
            threshold=threshold,
            note=note,
            added_by=actor,
            added_at=_now(),
            thumbnail=_data_uri(decoded.image),
            original=original,
            **pixels,
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

    def _upgraded(self, entry: FlaggedEntry) -> FlaggedEntry:
        """An image entry whose pixel fields predate PIXELS_VERSION, made again from its
        original (kept in the flagged originals store) and saved; as it was when the
        original is gone."""
        if (
            entry.kind is not EntryKind.IMAGE
            or entry.pixels_version >= PIXELS_VERSION
            or self.originals is None
            or not entry.original
        ):
            return entry
        try:
            data = self.originals.get(entry.original)
        except NotFound:
            return entry
        decoded = decode_image(data, self.limits)
        pixels = entry_pixels(decoded.image, self.policy.keypoint_threshold)
        self.index.set_payload(self.collection, [entry.id], pixels)
        return replace(entry, **pixels)

    def _build(self, records: Sequence[Record]) -> _Snapshot:
        # In the order of their stored keypoints, not of their random ids: the vote
        # index's lists (and its ties) follow the order descriptors are stacked in, so one
        # set of flagged images then votes alike however and whenever it was added.
        records = sorted(records, key=lambda r: (str(r.payload.get("keypoints", "")), r.id))
        entries = [self._upgraded(FlaggedEntry.from_record(r)) for r in records]
        size = self.encoder.identity.size
        vectors = (
            np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
            if records
            else np.zeros((0, size), dtype=np.float32)
        )
        # An entry's pixel data never changes after it is added: decode it once.
        known = {e.id for e in entries}
        for stale in set(self._parts) - known:
            del self._parts[stale]
        parts = [self._parts.get(e.id) or self._parts.setdefault(e.id, _parts(e)) for e in entries]
        colours = np.stack([p.colours for p in parts]) if parts else None
        voters = [_voting_views(p) for p in parts]
        key = tuple((e.id, v is not None) for e, v in zip(entries, voters, strict=True))
        votes = self._votes if self._votes is not None and self._votes[0] == key else None
        if votes is None:
            votes = (key, *_vote_index(voters))
            self._votes = votes
        return _Snapshot(
            entries,
            vectors,
            [p.hashes for p in parts],
            time.monotonic(),
            [p.layout for p in parts],
            colours,
            [p.features for p in parts],
            [p.frame for p in parts],
            [p.refutes for p in parts],
            votes[1],
            votes[2],
        )

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
        pixels_of: Callable[[int], Pixels | None] | None = None,
        snapshot: _Snapshot | None = None,
        approved: Sequence[Sequence[str]] | None = None,
        hashes: Sequence[int | None] | None = None,
        digests: Sequence[str | None] | None = None,
    ) -> list[Verdict]:
        """Verdicts for images given their vectors.

        ``pixels_of(i)`` gives image i's content hash, layout and keypoints when the
        caller has its pixels (asked at most once per image, and only when the set holds
        image entries); without it, or when it returns None, only the embedding (and
        ``hashes``, when the caller kept them) can match. ``approved`` lists, per image,
        entries a reviewer already cleared it of. ``digests`` gives each image's sha256 where
        the caller has it: the very bytes of a flagged original match before any other
        signal is weighed.
        """
        snap = snapshot or self.snapshot()
        n = len(vectors)
        images = any(e.kind is EntryKind.IMAGE for e in snap.entries)
        if not snap.entries:
            return [Verdict(False, [], hashes[i] if hashes else None) for i in range(n)]
        cos = np.asarray(vectors, dtype=np.float64).reshape(n, -1) @ snap.vectors.T.astype(
            np.float64
        )
        thresholds = [self.threshold(e) for e in snap.entries]
        verdicts = []
        for i in range(n):
            cleared = set(approved[i]) if approved is not None else set()
            pixels = _Lazy(pixels_of, i)
            px = pixels.get() if images and hashes is None else None
            query_hash = hashes[i] if hashes is not None else (px.phash if px else None)
            dists = [
                int(hamming(query_hash, h).min()) if len(h) and query_hash is not None else None
                for h in snap.hashes
            ]
            candidates, voted, views = self._candidates(cos[i], dists, snap, cleared, pixels)
            # Whole frames are compared for the likeliest entries: the nearest by embedding
            # and those the keypoints voted for (a copy's entry is among them); for others
            # only where their contents agree in part (``_Verifier``).
            likeliest = voted | {int(np.argmax(cos[i]))}
            # Without content keypoints (too small) the query cannot vote, and without
            # content views an entry cannot be voted for: then candidacy will do.
            blind_votes = views is None
            matches = []
            digest = digests[i] if digests is not None else None
            for j, entry in enumerate(snap.entries):
                if entry.id in cleared:
                    continue
                exact = bool(digest) and entry.original == digest
                verify = _Verifier(
                    snap,
                    j,
                    pixels,
                    self.policy.keypoint_threshold,
                    views[j] if views else None,
                    frames=j in likeliest
                    or (j in candidates and (blind_votes or not _has_views(snap, j))),
                    floor=self.policy.keypoint_floor,
                )
                layout = _Layout(snap, j, pixels, j in candidates)
                if exact:
                    signal: str | None = "exact"  # the flagged bytes: nothing to weigh
                else:
                    if j in voted:
                        verify.run()  # nominated by votes: keypoints may match on their own
                    signal = self._signal(float(cos[i, j]), thresholds[j], dists[j], layout, verify)
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
                            layout.value,
                            verify.inliers,
                            verify.agreement,
                        )
                    )
            matches.sort(
                key=lambda m: (
                    m.signal not in ("exact", "embedding"),
                    m.signal != "exact",
                    -m.score,
                )
            )
            verdicts.append(Verdict(bool(matches), matches, query_hash))
        return verdicts

    def _candidates(
        self,
        cos: np.ndarray,
        dists: list[int | None],
        snap: _Snapshot,
        cleared: set[str],
        pixels: _Lazy,
    ) -> tuple[set[int], set[int], list[tuple[int, int]] | None]:
        """The image entries worth comparing pixel by pixel: the nearest by embedding, by
        hash (within ``phash_weak``), by colour histogram (at least ``colour_candidate``)
        and by keypoint votes, at most ``layout_candidates`` of each; of them, those the
        votes nominated (their keypoints are compared whatever the other signals say); and
        per entry the votes its two views (itself, its mirror) received.
        """
        p = self.policy
        k = p.layout_candidates
        usable = [
            j
            for j, e in enumerate(snap.entries)
            if e.kind is EntryKind.IMAGE and e.id not in cleared
        ]
        if not usable or k == 0:
            return set(), set(), None
        out = set(sorted(usable, key=lambda j: -cos[j])[:k])
        near = [j for j in usable if (d := dists[j]) is not None and d <= p.phash_weak]
        out |= set(sorted(near, key=lambda j: dists[j] or 0)[:k])
        px = pixels.get()
        if px is None:
            return out, set(), None
        if px.colours is not None and snap.colours is not None:
            shared = np.minimum(snap.colours, px.colours[None, :]).sum(axis=1)
            alike = [j for j in usable if shared[j] >= p.colour_candidate]
            out |= set(sorted(alike, key=lambda j: -shared[j])[:k])
        voted: set[int] = set()
        views = None
        if px.features is not None and snap.vote_index is not None:
            ranked, views = _vote(px.features, snap, k)
            voted = set(ranked) & set(usable)
            whole = px.frame_view()[0] if px.barely else None
            if whole is not None:
                # Trimmed where the entry may have been left whole: the whole frame's
                # keypoints vote too (the content's, boxed with a caption, find few). For
                # every trimmed copy, they let three unrelated objects on white in (real
                # photos, seed 2) and caught no copy more.
                ranked, more = _vote(whole, snap, k)
                voted |= set(ranked) & set(usable)
                views = [(a + c, b + d) for (a, b), (c, d) in zip(views, more, strict=True)]
        return out | voted, voted, views

    def _signal(
        self,
        score: float,
        threshold: float,
        dist: int | None,
        layout: _Layout,
        verify: _Verifier,
    ) -> str | None:
        """Which rule, if any, makes one image match one entry (module docstring). The
        cheap signals go first; keypoints are compared only for candidates (nominated by
        votes, embedding, hash or colour), and before the layout, which is dearer."""
        p = self.policy
        if score >= threshold - COSINE_ROUNDING:
            return "embedding"
        borderline = score >= threshold - p.borderline_margin
        if (
            verify.applies
            and self._keypoints_match(verify, borderline)
            and not self._layout_contradicts(verify, layout)
        ):
            return _keypoint_signal(verify)  # nominated by votes and verified
        hashed = dist is not None and (
            dist <= p.phash_strong or (dist <= p.phash_weak and borderline)
        )
        if verify.applies and (hashed or layout.candidate) and not layout.blind:
            # A candidate's keypoints go first: most candidates are other pictures, refuted
            # by a verifiable entry's keypoints before any layout is aligned; and a copy of
            # one that does not verify (a flat render) may still keep enough to confirm.
            verify.run()
            if self._keypoints_match(verify, borderline):
                if not self._layout_contradicts(verify, layout):
                    return _keypoint_signal(verify)
            elif self._keypoints_refute(verify):
                return None
        if not (hashed or layout.possible):
            return None
        aligned = layout.score()
        signal = None
        # Smooth, low-detail pictures (a wall, a face, a sky, a flat shape) align with one
        # another. For an entry whose keypoints cannot refute such a coincidence, many of
        # its kept keypoints agreeing on pixels that agree confirm the layout (as a
        # verifiable entry's would), or else the cosine must.
        confirmed = verify.verifiable or (
            (verify.inliers or 0) >= p.keypoint_threshold
            and (verify.agreement is None or verify.agreement >= p.keypoint_agreement_floor)
        )
        if aligned is not None and aligned >= p.layout_threshold and (confirmed or borderline):
            signal = "layout" if confirmed else "layout+embedding"
        elif hashed and dist is not None and (layout.blind or (aligned or 0.0) >= p.layout_floor):
            # Without pixels (an original gone) the stored hash speaks alone.
            signal = "phash" if dist <= p.phash_strong else "phash+embedding"
        elif hashed and aligned is None and not verify.verifiable and borderline:
            # A flat render (one colour on a plain backdrop) has no layout to compare and
            # no keypoints to verify by: its hash with a borderline cosine is all there is,
            # and both must agree (the hash alone collides between flat shapes).
            signal = "phash+embedding"
        if signal is not None and verify.applies:
            verify.run()
            if verify.verifiable:
                if self._keypoints_match(verify, borderline):
                    return "keypoints"
                if self._keypoints_refute(verify):
                    return None  # the keypoints of a verifiable entry disagree: a coincidence
            elif verify.agreement is not None and verify.agreement < p.keypoint_agreement_floor:
                # However few keypoints agree, the pixels their transform lays over disagree:
                # a render cut from the same template in other colours, not a copy.
                return None
        return signal

    def _keypoints_match(self, verify: _Verifier, borderline: bool) -> bool:
        """Keypoints make a match: many agree on one transform and the pixels it lays
        over mostly agree, or fewer agree and the pixels all but all do. For an entry
        whose copies do not verify, only many keypoints on pixels that all but all agree,
        with a ``borderline`` cosine: its keypoints are not known to repeat, and renders
        on one backdrop (the same studio, the same seed) agree by it alone."""
        p = self.policy
        found, agreement = verify.inliers, verify.agreement
        if found is None:
            return False
        if not verify.verifiable:
            return (
                borderline
                and found >= p.keypoint_threshold
                and agreement is not None
                and agreement >= p.keypoint_agreement_threshold
            )
        if found >= p.keypoint_threshold:
            return agreement is None or agreement >= p.keypoint_agreement_floor
        return (
            found >= p.keypoint_floor
            and agreement is not None
            and agreement >= p.keypoint_agreement_threshold
        )

    def _layout_contradicts(self, verify: _Verifier, layout: _Layout) -> bool:
        """Fewer than ``keypoint_threshold`` agreeing keypoints are a coincidence of shared
        detail (one typeface in two posters: their glyphs agree, and the plain backdrop
        between them agrees on the pixels) when the aligned layouts, where both carry
        enough content to compare, disagree: under ``layout_veto``."""
        if verify.inliers is None or verify.inliers >= self.policy.keypoint_threshold:
            return False
        aligned = layout.score()
        # 0 is the layout's verdict that the backdrops differ, not a comparison of where
        # the content lies; a caption inside the content box moves the normalisation and
        # with it the backdrop's colour, so a captioned copy can get it.
        return aligned is not None and 0.0 < aligned < self.policy.layout_veto

    def _keypoints_refute(self, verify: _Verifier) -> bool:
        """A verifiable entry's keypoints say the image is another picture: too few agree,
        or the pixels their transform lays over do not."""
        p = self.policy
        if verify.inliers is None or not verify.verifiable:
            return False  # nothing to compare, or not known to repeat: no refutation
        if verify.inliers < p.keypoint_floor:
            return True
        return verify.agreement is not None and verify.agreement < p.keypoint_agreement_floor

    def check_images(
        self,
        images: Sequence[Image.Image],
        vectors: np.ndarray,
        digests: Sequence[str | None] | None = None,
    ) -> list[Verdict]:
        """Verdicts for decoded images (at ``PIXEL_SIDE`` or more) with their vectors."""
        return self.check(vectors, pixels_of=lambda i: Pixels.of(images[i]), digests=digests)

    def check_uploads(
        self,
        originals: Sequence[bytes],
        vectors: np.ndarray,
        digests: Sequence[str | None] | None = None,
    ) -> list[Verdict]:
        """Verdicts for validated uploads with their vectors (ingest). Their pixels are
        decoded at ``PIXEL_SIDE`` only when image entries are flagged: the model needs
        fewer, and a catalog without flagged images pays nothing."""

        def pixels_of(i: int) -> Pixels | None:
            try:
                decoded = decode_image(originals[i], self.limits, min_side=PIXEL_SIDE)
            except InvalidImage:
                return None
            return Pixels.of(decoded.image)

        return self.check(vectors, pixels_of=pixels_of, digests=digests)

    def _model_input(self, data: bytes, decoded: Image.Image) -> Image.Image:
        """The image as ingest hands it to the model (decoded at the model's input size,
        JPEG DCT scaling and all), so a flagged image, a check and an upload of the same
        bytes get the same vector; ``decoded`` when no smaller decode exists."""
        size = self.encoder.input_size
        if size is None or min(decoded.size) <= size:
            return decoded
        return decode_image(data, self.limits, min_side=size).image

    def check_bytes(self, data: bytes) -> Verdict:
        """Check an image that is not stored (``/moderate``).

        Raises:
            InvalidImage: refused like any upload.
        """
        decoded = decode_image(data, self.limits, min_side=PIXEL_SIDE)
        vector = self.encoder.encode_images([self._model_input(data, decoded.image)])[0]
        return self.check(
            vector[None, :],
            pixels_of=lambda _: Pixels.of(decoded.image),
            digests=[sha256_hex(data)],
        )[0]


def _keypoint_signal(verify: _Verifier) -> str:
    """A keypoint match's name: an entry that does not verify needed the cosine too."""
    return "keypoints" if verify.verifiable else "keypoints+embedding"


def _has_views(snap: _Snapshot, j: int) -> bool:
    """The entry has content keypoint views (so the query's keypoints vote for it)."""
    pair = snap.features[j] if j < len(snap.features) else None
    return pair is not None and any(view is not None for view in pair)


class _Lazy:
    """A query image's pixels, computed on first use."""

    def __init__(self, pixels_of: Callable[[int], Pixels | None] | None, i: int) -> None:
        self._of = pixels_of
        self._i = i
        self._done = False
        self._value: Pixels | None = None

    def get(self) -> Pixels | None:
        if not self._done:
            self._value = self._of(self._i) if self._of is not None else None
            self._done = True
        return self._value


@dataclass(frozen=True)
class _Pairing:
    """One keypoint comparison: its result and what it compared."""

    found: Geometric
    query: Features
    query_layout: np.ndarray | None
    flagged: Features
    flagged_layout: np.ndarray | None
    mirrored: bool
    canvas: bool = False  # the flagged layout is a whole frame around trimmed content


class _Verifier:
    """Keypoint inliers of one query image against one verifiable entry, on demand."""

    def __init__(
        self,
        snap: _Snapshot,
        j: int,
        pixels: _Lazy,
        enough: int,
        votes: tuple[int, int] | None = None,
        frames: bool = True,
        floor: int | None = None,
    ) -> None:
        self.flagged = snap.features[j] if j < len(snap.features) else None
        self.refutes = bool(snap.refutes[j]) if j < len(snap.refutes) else False
        self.frames = frames  # whether whole frames are compared (the entry is likely)
        self.floor = floor  # content inliers that let them be compared all the same
        layout = snap.layouts[j] if j < len(snap.layouts) else None
        self.flagged_layout = layout.thumbnail if layout is not None else None
        self.frame = snap.frames[j] if j < len(snap.frames) else None
        self.pixels = pixels
        self.enough = enough
        self.votes = votes  # what the query's keypoints voted for the entry and its mirror
        self._done = False
        self.inliers: int | None = None
        self.agreement: float | None = None  # of the pixels laid over by the transform
        # The pairing that agreed most: its transform, and the query's and the entry's
        # features and layout thumbnails it was found between (mirrored: the entry's mirror).
        self._best: _Pairing | None = None

    @property
    def applies(self) -> bool:
        """The entry's keypoints have a say: they may confirm a match, and when its copies
        verify (``refutes``), refute one."""
        return self.flagged is not None or self.frame is not None

    @property
    def verifiable(self) -> bool:
        """The entry's copies verify by keypoints, so its keypoints refute too."""
        return self.refutes and self.applies

    def run(self) -> int | None:
        """Agreeing keypoints; None when the query has none to compare (too small, too
        plain, or no pixels): then keypoints neither match nor refute."""
        if not self._done and self.applies:
            self._done = True
            px = self.pixels.get()
            features = px.features if px is not None else None
            # Content too small to verify may still sit in a frame that does (a photo
            # padded or cropped until its backdrop looks like a frame).
            if px is not None and (features is not None or (self.frames and px.frame is not None)):
                self.inliers = self._compare(px, features, self.flagged or (None, None))
                self.agreement = self._agreement()
        return self.inliers

    def _agreement(self) -> float | None:
        """How well the pixels agree once laid over by the best pairing's transform."""
        best = self._best
        if best is None or best.found.transform is None:
            return None
        if best.query_layout is None or best.flagged_layout is None:
            return None
        if best.query.size is None or best.flagged.size is None:
            return None
        value = warped_agreement(
            best.query_layout,
            best.query.size,
            best.flagged_layout,
            best.flagged.size,
            best.found.transform,
            best.mirrored,
            best.canvas,
        )
        return round(value, 4) if value is not None else None

    def _try(self, best: int, pairing: _Pairing, bar: int = 0) -> int:
        """The pairing is the best so far when it has more inliers than ``best``, and at
        least ``bar``."""
        if self._best is None or pairing.found.inliers > max(best, bar - 1):
            self._best = pairing
            return pairing.found.inliers
        return best

    def _compare(
        self, px: Pixels, query: Features | None, views: tuple[Features | None, Features | None]
    ) -> int | None:
        """Inliers against the view (the entry or its mirror) the votes favour; the other
        view too only when the first falls short of ``enough`` and the other drew votes
        (a mirrored copy's keypoints vote for the mirror); then, still short, the whole
        frames and the entry frame's mirror, where either image was trimmed (a caption
        across the object, or a crop into its backdrop, moves the content box but not the
        object in the frame). None when no view could be compared (then keypoints neither
        match nor refute).
        Matching is a check's dearest step, and most checked entries are refuted by the
        first view."""
        votes = self.votes
        order = (1, 0) if votes is not None and votes[1] > votes[0] else (0, 1)
        best = 0
        for rank, view in enumerate(order):
            features = views[view]
            if features is None or query is None:
                continue
            if rank == 1 and (
                best >= self.enough or (votes is not None and votes[view] < MIN_VIEW_VOTES)
            ):
                break
            pairing = _Pairing(
                geometric(query, features),
                query,
                px.layout,
                features,
                self.flagged_layout,
                view == 1,
            )
            best = self._try(best, pairing)
        # Content that agreed in part (``floor`` keypoints, short of ``enough``) makes the
        # entry likely too: a caption across the object moved one content box only. Then
        # a frame pairing takes the content's place only with ``enough`` inliers: more
        # keypoints on pixels that agree less must not undo what the content showed.
        partly = self.floor is not None and best >= max(1, self.floor)
        bar = 0 if self.frames else self.enough
        if (
            best >= self.enough
            or not (self.frames or partly)
            or (px.frame is None and self.frame is None)
        ):
            return best if self._best is not None else None
        flagged_layout: np.ndarray | None
        if self.frame is not None:
            frame = self.frame
            targets = [(frame.features, False), (frame.mirror, True)]
            flagged_layout = frame.layout
        else:  # the entry was not trimmed: its content is its frame
            targets = [(views[0], False), (views[1], True)]
            flagged_layout = self.flagged_layout
        # The whole frame, then (still short) the picture inside its flat padding.
        for whole_view in (px.frame_view, px.inner_view):
            query_frame, query_layout = whole_view() if best < self.enough else (None, None)
            for features, mirrored in targets:
                if query_frame is None or features is None or best >= self.enough:
                    continue
                pairing = _Pairing(
                    geometric(query_frame, features),
                    query_frame,
                    query_layout,
                    features,
                    flagged_layout,
                    mirrored,
                    self.frame is not None,
                )
                best = self._try(best, pairing, bar)
        return best if self._best is not None else None


class _Layout:
    """Aligned-layout agreement of one query image with one candidate entry, on demand
    (aligning is the dearest signal)."""

    def __init__(self, snap: _Snapshot, j: int, pixels: _Lazy, candidate: bool) -> None:
        self.flagged = snap.layouts[j] if candidate and j < len(snap.layouts) else None
        self.pixels = pixels
        self.value: float | None = None
        self._done = False

    @property
    def candidate(self) -> bool:
        """The entry was nominated for pixel comparison."""
        return self.flagged is not None

    @property
    def blind(self) -> bool:
        """No pixels of the query are at hand (only a stored hash)."""
        return self.pixels.get() is None

    @property
    def possible(self) -> bool:
        """The entry is a candidate and both layouts carry enough content to compare."""
        px = self.pixels.get() if self.flagged is not None else None
        query = px.prepared() if px is not None else None
        return bool(query and query.informative and self.flagged and self.flagged.informative)

    def score(self) -> float | None:
        """The agreement (None: not a candidate, or too little content)."""
        if not self._done:
            self._done = True
            if self.possible:
                px = self.pixels.get()
                assert px is not None and self.flagged is not None
                query = px.prepared()
                assert query is not None
                found = layout_score(query, self.flagged)
                self.value = round(found, 4) if found is not None else None
        return self.value


def _vote(query: Features, snap: _Snapshot, k: int) -> tuple[list[int], list[tuple[int, int]]]:
    """The entries most of a query's keypoints find their nearest descriptor in, and per
    entry the votes for it as it is and for its mirror (content and frame views alike)."""
    assert snap.vote_index is not None and snap.vote_owners is not None
    step = max(1, len(query) // VOTERS)
    faiss.omp_set_num_threads(1)  # as ``two_nearest`` says why
    distance, nearest = snap.vote_index.search(
        np.ascontiguousarray(query.descriptors[::step], dtype=np.uint8), 1
    )
    close = (distance[:, 0] <= VOTE_DISTANCE) & (nearest[:, 0] >= 0)
    owners = snap.vote_owners[nearest[close, 0]]
    per_view = np.bincount(owners, minlength=VIEWS * len(snap.entries)).reshape(-1, VIEWS)
    counts = per_view.sum(axis=1)
    ranked = [int(j) for j in np.argsort(-counts)[:k] if counts[j] >= MIN_VOTES]
    upright, mirrored = per_view[:, 0::2].sum(axis=1), per_view[:, 1::2].sum(axis=1)
    return ranked, [(int(a), int(b)) for a, b in zip(upright, mirrored, strict=True)]


def entry_pixels(image: Image.Image, keypoint_threshold: int) -> dict[str, Any]:
    """The pixel fields of a flagged image: content hashes, layout, keypoints of it and of
    its mirror, and whether degraded copies of it verify by keypoints."""
    found = content(image)
    if found is None:
        return {
            "phashes": [],
            "layout": "",
            "keypoints": "",
            "keypoints_mirror": "",
            "pixels_version": PIXELS_VERSION,
        }
    pair = keypoint_features(found), keypoint_features(found, mirror=True)
    # Of a verifiable entry only the views whose degraded copies verify are kept: one that
    # does not would refute every copy. An entry with no such view keeps them all, to
    # confirm (many keypoints agreeing on pixels that agree), never to refute.
    content_ok = pair[0] is not None and self_test(image, pair) >= keypoint_threshold
    frame_ok, frame = False, None
    if found.background is not None:  # trimmed: the whole frame is a view of its own
        whole = Content(image.convert("RGB"), None)
        frame = keypoint_features(whole), keypoint_features(whole, mirror=True)
        # A flat render's content may not verify where its frame, corners of the backdrop
        # and all, does: then the frame alone lets keypoints speak for the entry.
        frame_ok = (
            frame[0] is not None
            and self_test(image, (frame[0], None), whole_frame=True) >= keypoint_threshold
        )
    verifiable = content_ok or frame_ok
    keep_content = content_ok or not verifiable
    out: dict[str, Any] = {
        "phashes": [f"{h:016x}" for h in hash_variants(found)],
        "layout": encode_layout(layout_thumbnail(found)),
        "keypoints": pair[0].encode() if keep_content and pair[0] is not None else "",
        "keypoints_mirror": pair[1].encode() if keep_content and pair[1] is not None else "",
        "verifiable": verifiable,
        "pixels_version": PIXELS_VERSION,
        "keypoints_frame": "",
        "keypoints_frame_mirror": "",
        "layout_frame": "",
    }
    if frame is not None and frame[0] is not None:
        out["keypoints_frame"] = frame[0].encode()
        out["keypoints_frame_mirror"] = frame[1].encode() if frame[1] is not None else ""
        out["layout_frame"] = encode_layout(layout_thumbnail(whole))
    return out


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
