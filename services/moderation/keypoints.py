"""Local features: the verification that two pictures show the same pixels.

ORB keypoints of an image's content (grey, histogram-equalised, 320 px on the longer
side: padding and plain backgrounds trimmed, so a copy's content comes out at about the
same scale as the original's; kept spread over it, so a caption's letters cannot take
them all) are matched against a flagged image's (ratio test), and the matches that agree on
one rotation, uniform scale and shift (RANSAC) are counted. A copy that was cropped,
rotated a few degrees, resized, recompressed, brightened, greyed or captioned keeps
hundreds of such inliers; two different objects on white, or two textures of the same
colour, keep a handful. A flagged image also stores the features of its mirror image (and, when its content was
trimmed out of a frame, of the whole frame). ``geometric`` returns the transform too, so
the pixels it lays over can be compared (``layout.warped_agreement``): a repeated pattern
agrees by keypoints, not by pixels.

Not every picture has repeatable keypoints (flat renders, silhouettes): when a flagged
image is added, a degraded copy of it is verified against it (``self_test``); only an
image that passes is "verifiable", and only then may its keypoints refute what the other
pixel signals say; the keypoints of one that does not are kept to confirm (many agreeing
on pixels that agree), never to refute.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any

import cv2
import faiss
import numpy as np
from PIL import Image, ImageOps

from services.moderation.content import Content, content

SIDE = 320  # keypoints are found on the content resized to this longer side
MAX_FEATURES = 1000
# Keypoints are found up to DETECTED, then MAX_FEATURES kept spread over a GRID x GRID
# grid: each cell's strongest first, up to an equal share, then the strongest left.
DETECTED = 3000
GRID = 8
RATIO = 0.8  # Lowe's ratio test
REPROJECTION_PX = 6.0  # RANSAC inlier distance, at SIDE
MAX_ROTATION_DEG = 15.0
SCALE_RANGE = (0.5, 2.0)
MIN_FEATURES = 30  # fewer keypoints than this: the picture cannot be verified
# Content smaller than this (px, longer side) cannot be verified either. An object a
# quarter of a 480 px product shot is 120 px: at 128 such entries were never verified,
# and their copies were left to the other signals (0.62 of them caught in an outside
# attack); whether one this small verifies is the self-test's to say.
MIN_SIDE = 96


@dataclass(frozen=True)
class Features:
    """Keypoint positions (N, 2) and ORB descriptors (N, 32), found on the content
    resized to ``size`` (width, height; the longer side SIDE)."""

    xy: np.ndarray
    descriptors: np.ndarray
    size: tuple[float, float] | None = None  # None: stored before sizes were kept

    def __len__(self) -> int:
        return len(self.descriptors)

    def encode(self) -> str:
        """Base64 text for a payload."""
        buf = io.BytesIO()
        size = np.asarray(self.size if self.size is not None else (0.0, 0.0), dtype=np.float32)
        np.savez_compressed(buf, xy=self.xy.astype(np.float16), d=self.descriptors, s=size)
        return base64.b64encode(buf.getvalue()).decode()

    @classmethod
    def decode(cls, text: str) -> Features | None:
        """The features ``encode`` wrote, or None if absent or malformed."""
        if not text:
            return None
        try:
            with np.load(io.BytesIO(base64.b64decode(text, validate=True))) as data:
                size = None
                if "s" in data.files and float(data["s"].min()) > 0:
                    size = (float(data["s"][0]), float(data["s"][1]))
                return cls(data["xy"].astype(np.float32), data["d"].astype(np.uint8), size)
        except (binascii.Error, OSError, ValueError, KeyError, IndexError):
            return None


@dataclass(frozen=True)
class Geometric:
    """A keypoint match: agreeing keypoints, and the transform (2x3, query to flagged
    coordinates at SIDE scale) they agree on; None when there is none."""

    inliers: int
    transform: np.ndarray | None = None


def _detector() -> Any:
    return cv2.ORB_create(nfeatures=DETECTED, fastThreshold=20)  # type: ignore[attr-defined]


def spread(keypoints: Any, size: tuple[int, int]) -> np.ndarray:
    """Which keypoints to keep (indices): the strongest of each grid cell first.

    Taken by strength alone, the keypoints go where the contrast is: a caption's
    letters or a sticker's outline outshine the fur or fabric under them, and a copy
    with text across a small object kept too few of the object's to verify (30
    agreeing, against the 40 a match needs, with the pixels elsewhere all agreeing).
    Spread over the picture, as SLAM systems keep theirs, what the overlay leaves
    uncovered keeps its share."""
    n = len(keypoints)
    if n <= MAX_FEATURES:
        return np.arange(n)
    xy = np.array([k.pt for k in keypoints], dtype=np.float32)
    strength = np.array([k.response for k in keypoints], dtype=np.float32)
    w, h = size
    col = np.minimum((xy[:, 0] * GRID / w).astype(int), GRID - 1)
    row = np.minimum((xy[:, 1] * GRID / h).astype(int), GRID - 1)
    cell = row * GRID + col
    order = np.lexsort((-strength, cell))  # by cell, the strongest first within each
    first = np.searchsorted(cell[order], cell[order])  # where each one's cell begins
    rank = np.empty(n, int)
    rank[order] = np.arange(n) - first
    fair = rank < MAX_FEATURES // (GRID * GRID)
    rest = np.flatnonzero(~fair)
    rest = rest[np.argsort(-strength[rest], kind="stable")][: MAX_FEATURES - int(fair.sum())]
    return np.sort(np.concatenate([np.flatnonzero(fair), rest]))


def features(found: Content, mirror: bool = False) -> Features | None:
    """ORB features of an image's content (None: too small, or too few keypoints, to
    verify: a thumbnail-sized copy's keypoints do not repeat, so they cannot refute)."""
    if max(found.image.size) < MIN_SIDE:
        return None
    picture = ImageOps.mirror(found.image) if mirror else found.image
    grey = np.asarray(picture.convert("L"))
    scale = SIDE / max(grey.shape)
    size = (max(8, round(grey.shape[1] * scale)), max(8, round(grey.shape[0] * scale)))
    grey = cv2.equalizeHist(cv2.resize(grey, size, interpolation=cv2.INTER_AREA))
    orb = _detector()
    found_points = orb.detect(grey, None)
    if len(found_points) < MIN_FEATURES:
        return None
    # Descriptors of the kept ones only (the same as of all, then picked; 1-3 ms less).
    keypoints, descriptors = orb.compute(
        grey, [found_points[i] for i in spread(found_points, size)]
    )
    if descriptors is None or len(keypoints) < MIN_FEATURES:
        return None
    return Features(
        np.array([k.pt for k in keypoints], dtype=np.float32),
        descriptors,
        (float(size[0]), float(size[1])),
    )


def two_nearest(query: np.ndarray, flagged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hamming distances to, and indices of, each query descriptor's two nearest flagged
    descriptors: an exact scan, as OpenCV's brute-force matcher does, but with hardware
    popcounts (faiss's binary flat index): 3-5x faster on a 1000 x 1000 comparison, the
    dearest step of a moderation check.

    One OpenMP thread, always (the setting is per calling thread, so every call states
    it). faiss ships its own libgomp beside torch's: after a model forward pass in the
    same process, two faiss threads wait at each barrier for a core another process (a
    second worker, a busy neighbour) holds, and a 2 ms scan took 14 ms with one busy
    process beside it and 750 ms under a niced model job. Two threads save under 1 ms
    on an idle machine."""
    faiss.omp_set_num_threads(1)
    index = faiss.IndexBinaryFlat(flagged.shape[1] * 8)
    index.add(np.ascontiguousarray(flagged, dtype=np.uint8))
    dist, nearest = index.search(np.ascontiguousarray(query, dtype=np.uint8), 2)
    return dist, nearest


def inliers(query: Features, flagged: Features) -> int:
    """How many of the query's keypoints a single rotation + scale + shift maps onto the
    flagged image's matching keypoints (0 when no plausible transform exists)."""
    return geometric(query, flagged).inliers


def geometric(query: Features, flagged: Features) -> Geometric:
    """The rotation + scale + shift most of the query's matched keypoints agree on, and
    how many do."""
    if len(flagged) < 2:
        return Geometric(0)
    dist, nearest = two_nearest(query.descriptors, flagged.descriptors)
    good = np.flatnonzero(dist[:, 0] < RATIO * dist[:, 1])
    if len(good) < 8:
        return Geometric(0)
    src = query.xy[good]
    dst = flagged.xy[nearest[good, 0]]
    transform, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION_PX, maxIters=500
    )
    if transform is None or mask is None:
        return Geometric(0)
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    rotation = float(np.degrees(np.arctan2(transform[1, 0], transform[0, 0])))
    if not SCALE_RANGE[0] < scale < SCALE_RANGE[1] or abs(rotation) > MAX_ROTATION_DEG:
        return Geometric(0)
    return Geometric(int(mask.sum()), transform)


def best_inliers(
    query: Features, flagged: tuple[Features | None, Features | None], enough: int = 0
) -> int:
    """Inliers against a flagged image or its mirror, whichever agrees more; the mirror
    is skipped when the image itself already has ``enough`` (0: always compared)."""
    best = 0
    for view in flagged:
        if view is not None:
            best = max(best, inliers(query, view))
            if enough and best >= enough:
                break
    return best


def self_test(
    image: Image.Image,
    flagged: tuple[Features | None, Features | None],
    whole_frame: bool = False,
) -> int:
    """Inliers of degraded copies (JPEG quality 50; cropped by 5% a side) against the
    image itself, the fewer of the two: how well its copies will verify. ``whole_frame``:
    the copies' whole frames against the image's, rather than their contents."""
    w, h = image.size
    copies = (image, image.crop((w // 20, h // 20, w - w // 20, h - h // 20)))
    worst = None
    for copy, quality in zip(copies, (50, 70), strict=True):
        buf = io.BytesIO()
        copy.convert("RGB").save(buf, format="JPEG", quality=quality)
        degraded = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        found = Content(degraded, None) if whole_frame else content(degraded)
        probe = features(found) if found is not None else None
        score = best_inliers(probe, flagged) if probe is not None else 0
        worst = score if worst is None else min(worst, score)
    return worst or 0
