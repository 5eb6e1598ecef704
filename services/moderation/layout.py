"""Aligned colour layout: a copy check that survives crops, mirroring and captions.

pHash compares low DCT frequencies of the whole frame, so a crop that removes 10% of one
side, or a caption across the picture, moves it as far as an unrelated photo of the same
scene type; an embedding moves likewise when a crop cuts into the object. A copy still
has the same colours in the same places once it is aligned with its original. This module
keeps a 64x64 colour thumbnail of each flagged image and, for a candidate image, searches
the crops (80-100% of each side, any position) and the mirror of that thumbnail for the
one whose 12x12 grid of mean colours best agrees with the image's own grid; the score is
the share of grid cells whose colour agrees within a tolerance, so a caption covering a
tenth of the picture costs about a tenth of the score. Alignment is coarse to fine (5%
steps, then 2.5% and 1.25% around the best), with box sums from an integral image.

It is a verification step, not an index: run it on the few flagged images whose colour
histograms (:func:`colour_histogram`, compared for every entry) are closest to an image's.
"""

from __future__ import annotations

import base64
import binascii
from functools import cache

import numpy as np
from PIL import Image

SIDE = 64  # thumbnail side (px)
CELLS = 12  # grid cells per side compared after alignment
TOLERANCE = 24.0  # largest per-channel difference (0-255) at which two cells agree
MIN_CROP = 0.8  # the smallest share of each side a copy may keep
BINS = 6  # colour-histogram bins per channel
_COARSE = 0.05
_REFINE = (0.025, 0.0125)  # steps of the refinement passes around the best box


def layout_thumbnail(image: Image.Image) -> np.ndarray:
    """The (SIDE, SIDE, 3) uint8 thumbnail that layouts are compared on."""
    small = image.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def encode_layout(thumbnail: np.ndarray) -> str:
    """Base64 text for a payload (12 KB raw)."""
    return base64.b64encode(np.ascontiguousarray(thumbnail, dtype=np.uint8).tobytes()).decode()


def decode_layout(text: str) -> np.ndarray | None:
    """The thumbnail stored by :func:`encode_layout`, or None if absent or malformed."""
    if not text:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
    if len(raw) != SIDE * SIDE * 3:
        return None
    return np.frombuffer(raw, dtype=np.uint8).reshape(SIDE, SIDE, 3)


def colour_histogram(thumbnail: np.ndarray, bins: int = BINS) -> np.ndarray:
    """L1-normalised RGB histogram with soft (linear) binning, so a re-encode that nudges
    a colour across a bin edge moves weight gradually; crops, mirrors and small captions
    barely change it. Used to pick which flagged images to align against."""
    pos = thumbnail.reshape(-1, 3).astype(np.float32) / 255.0 * (bins - 1)
    low = np.minimum(pos.astype(np.int64), bins - 2)
    frac = pos - low
    hist = np.zeros(bins**3, dtype=np.float64)
    for corner in range(8):
        offset = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        weight = np.prod(np.where(offset == 1, frac, 1.0 - frac), axis=1)
        index = (low + offset) @ np.array([bins * bins, bins, 1])
        hist += np.bincount(index, weights=weight, minlength=bins**3)
    return hist / hist.sum()


def _integral(thumbnail: np.ndarray) -> np.ndarray:
    """Integral image, one flattened row of (SIDE+1)^2 sums per channel."""
    ii = np.zeros((3, SIDE + 1, SIDE + 1), dtype=np.float32)
    ii[:, 1:, 1:] = thumbnail.astype(np.float32).transpose(2, 0, 1).cumsum(1).cumsum(2)
    return ii.reshape(3, -1)


def _cell_index(boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Corner indices into a flattened integral image, and cell areas, for each box's
    CELLS x CELLS grid; boxes are (x, y, w, h) as shares of the side."""
    steps = np.arange(CELLS + 1) / CELLS
    x0, y0, w, h = (boxes[:, i : i + 1] * SIDE for i in range(4))
    xs = np.rint(x0 + w * steps).astype(np.int64).clip(0, SIDE)
    ys = np.rint(y0 + h * steps).astype(np.int64).clip(0, SIDE)
    xa, xb = xs[:, None, :-1], xs[:, None, 1:]
    ya, yb = ys[:, :-1, None], ys[:, 1:, None]
    row = SIDE + 1
    area = ((yb - ya) * (xb - xa)).clip(min=1).astype(np.float32)
    return yb * row + xb, ya * row + xb, yb * row + xa, ya * row + xa, area


def _grid(ii: np.ndarray, index: tuple[np.ndarray, ...]) -> np.ndarray:
    """(3, boxes, CELLS, CELLS) mean colours."""
    br, tr, bl, tl, area = index
    return (ii[:, br] - ii[:, tr] - ii[:, bl] + ii[:, tl]) / area


def _boxes(sizes: np.ndarray, step: float) -> np.ndarray:
    out = []
    for w in sizes:
        for h in sizes:
            for x in np.linspace(0, 1 - w, round(float((1 - w) / step)) + 1):
                for y in np.linspace(0, 1 - h, round(float((1 - h) / step)) + 1):
                    out.append((x, y, w, h))
    return np.array(out, dtype=np.float64)


@cache
def _coarse() -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    boxes = _boxes(np.arange(MIN_CROP, 1.0 + 1e-9, _COARSE), _COARSE)
    return boxes, _cell_index(boxes)


@cache
def _whole() -> tuple[np.ndarray, ...]:
    return _cell_index(np.array([[0.0, 0.0, 1.0, 1.0]]))


_NUDGES = np.array(
    [
        (dx, dy, dw, dh)
        for dx in (-1, 0, 1)
        for dy in (-1, 0, 1)
        for dw in (-1, 0, 1)
        for dh in (-1, 0, 1)
    ],
    dtype=np.float64,
)


def _agreement(query: np.ndarray, grids: np.ndarray) -> np.ndarray:
    diff = np.abs(grids - query[:, None])
    worst = np.maximum(np.maximum(diff[0], diff[1]), diff[2])
    return (worst <= TOLERANCE).mean(axis=(1, 2))


def layout_score(image: np.ndarray, flagged: np.ndarray) -> float:
    """Share of grid cells that agree between ``image`` and the best-aligned crop of
    ``flagged`` or of its mirror (both thumbnails from :func:`layout_thumbnail`)."""
    query = _grid(_integral(image), _whole())[:, 0]
    boxes, index = _coarse()
    best = 0.0
    for view in (flagged, flagged[:, ::-1]):
        ii = _integral(view)
        scores = _agreement(query, _grid(ii, index))
        centre, top = boxes[int(scores.argmax())], float(scores.max())
        for step in _REFINE:
            candidates = centre[None, :] + _NUDGES * step
            candidates[:, 2:] = candidates[:, 2:].clip(MIN_CROP - 2 * _COARSE, 1.0)
            candidates[:, :2] = np.minimum(candidates[:, :2].clip(0.0), 1.0 - candidates[:, 2:])
            scores = _agreement(query, _grid(ii, _cell_index(candidates)))
            if float(scores.max()) > top:
                centre, top = candidates[int(scores.argmax())], float(scores.max())
        best = max(best, top)
    return best
