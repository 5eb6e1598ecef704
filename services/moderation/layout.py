"""Aligned colour layout: a copy check that survives crops, mirroring and captions.

Layouts are taken of an image's content (``services.moderation.content``: uniform
borders and padding trimmed, brightness and contrast normalised), with the cells that
show the trimmed background colour marked: those cells carry no evidence, so two
different objects on the same white background do not agree by their background. A
layout whose content cells are too few, or all of about the same brightness (a texture,
a flat colour), cannot match by layout at all. When either image is greyscale the
colours are compared by luminance.


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
from dataclasses import dataclass
from functools import cache, cached_property

import cv2
import numpy as np
from PIL import Image

from services.moderation.content import TRIM_TOLERANCE, Content, is_grey, normalised

SIDE = 64  # thumbnail side (px)
CELLS = 12  # grid cells per side compared after alignment
TOLERANCE = 24.0  # largest per-channel difference (0-255) at which two cells agree
MIN_CROP = 0.8  # the smallest share of each side a copy may keep
BINS = 6  # colour-histogram bins per channel
MIN_INFORMATIVE = 0.2  # the least share of content (non-background) cells to compare on
MIN_STRUCTURE = 8.0  # the least spread of content cells' brightness (0-255) to compare on
MIN_BACKDROP = 0.05  # the least share of background pixels for a backdrop colour to count
_COARSE = 0.05
_REFINE = (0.025, 0.0125)  # steps of the refinement passes around the best box


def _thumbnail(picture: Image.Image, background: tuple[int, int, int] | None) -> np.ndarray:
    small = np.asarray(picture.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.uint8)
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    if background is not None:
        differs = np.abs(small.astype(np.int16) - np.array(background)).max(axis=2)
        mask[differs <= TRIM_TOLERANCE] = 255
    colour = normalised(small, mask == 0).astype(np.uint8)
    return np.dstack([colour, mask])


def layout_thumbnail(found: Content) -> np.ndarray:
    """The (SIDE, SIDE, 4) uint8 thumbnail layouts are compared on: normalised colour of
    an image's content, and a background mask (255 where a pixel shows the trimmed
    background)."""
    return _thumbnail(found.image, found.background)


def encode_layout(thumbnail: np.ndarray) -> str:
    """Base64 text for a payload (16 KB raw)."""
    return base64.b64encode(np.ascontiguousarray(thumbnail, dtype=np.uint8).tobytes()).decode()


def decode_layout(text: str) -> np.ndarray | None:
    """The thumbnail stored by :func:`encode_layout`, or None if absent, malformed or of an
    older layout format."""
    if not text:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
    if len(raw) != SIDE * SIDE * 4:
        return None
    return np.frombuffer(raw, dtype=np.uint8).reshape(SIDE, SIDE, 4)


def colour_histogram(thumbnail: np.ndarray, bins: int = BINS) -> np.ndarray:
    """L1-normalised RGB histogram with soft (linear) binning, so a re-encode that nudges
    a colour across a bin edge moves weight gradually; crops, mirrors and small captions
    barely change it. Used to pick which flagged images to align against."""
    rgb = thumbnail[..., :3].reshape(-1, 3)
    if thumbnail.shape[-1] >= 4:  # background pixels say nothing about the content
        keep = thumbnail[..., 3].reshape(-1) < 128
        rgb = rgb[keep] if keep.any() else rgb
    pos = rgb.astype(np.float32) / 255.0 * (bins - 1)
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
    channels = thumbnail.shape[-1]
    ii = np.zeros((channels, SIDE + 1, SIDE + 1), dtype=np.float32)
    ii[:, 1:, 1:] = thumbnail.astype(np.float32).transpose(2, 0, 1).cumsum(1).cumsum(2)
    return ii.reshape(channels, -1)


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
    """(channels, boxes, CELLS, CELLS) means: colours, then the background share."""
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


def _agreement(query: np.ndarray, grids: np.ndarray, grey: bool) -> np.ndarray:
    """Share of cells that agree among those that show content in either image: a cell
    that is content in one and background in the other disagrees."""
    content_q = query[3] < 127.5
    content_g = grids[3] < 127.5
    if grey:
        diff = np.abs(grids[:3].mean(axis=0) - query[:3].mean(axis=0)[None])
    else:
        diff = np.abs(grids[:3] - query[:3, None]).max(axis=0)
    agree = (diff <= TOLERANCE) & content_q[None] & content_g
    either = content_q[None] | content_g
    return agree.sum(axis=(1, 2)) / np.maximum(either.sum(axis=(1, 2)), 1)


@dataclass(frozen=True)
class _View:
    """One view of a layout with what a comparison needs of it."""

    grid: np.ndarray  # (channels, CELLS, CELLS) of the whole view
    views: tuple[np.ndarray, np.ndarray]  # integral images of the view and its mirror
    informative: bool
    grey: bool
    backdrop: np.ndarray | None  # mean normalised colour of the background, if it shows

    @cached_property
    def coarse(self) -> tuple[np.ndarray, ...]:
        """Grids of the view and its mirror at every coarse box, once per query."""
        return _coarse_grids(self)


@dataclass(frozen=True)
class Prepared:
    """A layout with what every comparison needs of it computed once: a flagged entry's
    is kept with the flagged set, a query's for the few entries it is compared with."""

    thumbnail: np.ndarray
    parts: tuple[_View, ...]  # views compared pairwise (one per 4 channels)

    @property
    def informative(self) -> bool:
        """Some view has enough content to compare."""
        return any(v.informative for v in self.parts)


def _backdrop(thumbnail: np.ndarray) -> np.ndarray | None:
    shown = thumbnail[..., 3] >= 128
    if shown.mean() < MIN_BACKDROP:
        return None
    return np.asarray(thumbnail[..., :3][shown].mean(axis=0), dtype=np.float32)


def _view(thumbnail: np.ndarray) -> _View:
    ii = _integral(thumbnail)
    grid = _grid(ii, _whole())[:, 0]
    return _View(
        grid,
        (ii, _integral(thumbnail[:, ::-1])),
        _informative(grid),
        is_grey(thumbnail[..., :3]),
        _backdrop(thumbnail),
    )


def prepare(thumbnail: np.ndarray) -> Prepared:
    """Integral images, whole grids and the informative/grey verdicts of each view."""
    channels = thumbnail.shape[-1]
    return Prepared(
        thumbnail,
        tuple(_view(thumbnail[..., k : k + 4]) for k in range(0, channels - channels % 4, 4)),
    )


def _informative(grid: np.ndarray) -> bool:
    cells = grid[3] < 127.5
    if cells.mean() < MIN_INFORMATIVE:
        return False
    return float(grid[:3].mean(axis=0)[cells].std()) >= MIN_STRUCTURE


def informative(thumbnail: np.ndarray) -> bool:
    """Whether a layout has enough content to be compared at all: content cells must be
    a fair share of the grid and differ in brightness (a texture or a flat colour averages
    to the same grey in every cell, so its cells would agree with any other's)."""
    return _informative(_grid(_integral(thumbnail[..., :4]), _whole())[:, 0])


def layout_score(image: np.ndarray | Prepared, flagged: np.ndarray | Prepared) -> float | None:
    """Share of content cells that agree between ``image`` and the best-aligned crop of
    ``flagged`` or of its mirror (both from :func:`layout_thumbnail`, or :func:`prepare`
    of one); None when either carries too little content to compare."""
    query = image if isinstance(image, Prepared) else prepare(image)
    target = flagged if isinstance(flagged, Prepared) else prepare(flagged)
    scores = [_score(q, t) for q, t in zip(query.parts, target.parts, strict=False)]
    known = [s for s in scores if s is not None]
    return max(known) if known else None


def _score(query: _View, target: _View) -> float | None:
    if not (query.informative and target.informative):
        return None
    grey = query.grey or target.grey
    if query.backdrop is not None and target.backdrop is not None:
        a, b = query.backdrop, target.backdrop
        apart = abs(float(a.mean() - b.mean())) if grey else float(np.abs(a - b).max())
        if apart > TOLERANCE:
            return 0.0  # the same shapes on another backdrop: a new photo, not a copy
    # Either picture may hold more around the content than the other (a crop cut into
    # one; a caption or a shadow widened the other's box): align both ways.
    # The query's coarse grids are kept (it is compared with several entries); an
    # entry's are not (a large flagged set would hold hundreds of KB each).
    return max(
        _aligned(query, target, grey, _coarse_grids(target)),
        _aligned(target, query, grey, query.coarse),
    )


def _coarse_grids(view: _View) -> tuple[np.ndarray, ...]:
    _, index = _coarse()
    return tuple(_grid(ii, index) for ii in view.views)


def _aligned(query: _View, target: _View, grey: bool, coarse: tuple[np.ndarray, ...]) -> float:
    """The best agreement of the whole ``query`` with a crop of ``target`` or its mirror
    (``coarse``: the target views' grids at every coarse box)."""
    boxes, _ = _coarse()
    best = 0.0
    for ii, grids in zip(target.views, coarse, strict=True):
        scores = _agreement(query.grid, grids, grey)
        centre, top = boxes[int(scores.argmax())], float(scores.max())
        for step in _REFINE:
            candidates = centre[None, :] + _NUDGES * step
            candidates[:, 2:] = candidates[:, 2:].clip(MIN_CROP - 2 * _COARSE, 1.0)
            candidates[:, :2] = np.minimum(candidates[:, :2].clip(0.0), 1.0 - candidates[:, 2:])
            scores = _agreement(query.grid, _grid(ii, _cell_index(candidates)), grey)
            if float(scores.max()) > top:
                centre, top = candidates[int(scores.argmax())], float(scores.max())
        best = max(best, top)
    return best


WARP_CELLS = 16  # the grid (of SIDE / WARP_CELLS px cells) a keypoint match is checked on
# Passes standardising again over the cells that agree best (this share of the covered
# cells), until those cells stop changing. A texture's cells vary little, so the few cells
# of a caption bar that agree by chance in the first passes pull its scale for a pass or
# two: brick under a bar settles at the fourth (agreement 0.36 after two passes, 0.81).
REFITS = 6
REFIT_SHARE = 0.7
REFIT_SPREAD = 1.0  # least spread (of 48 after standardising) the refit cells need
BEYOND_SHARE = 0.1
BEYOND_PX = 2  # the strip outside each edge it is measured on
MIN_PART = 8  # cells an object or a backdrop needs to be weighed on its own
PART_FLOOR = 0.15  # less of either part agreeing: another picture (a copy under a bar keeps 0.26)
RING_SHARE = 0.75  # outer cells of one colour that make a backdrop of an untrimmed picture
BACKDROP_TOLERANCE = 12.0  # a backdrop is smooth: a copy's agrees closely
OBJECT_APART = 40.0  # a frame's cell this far from its outer cells' colour shows the object
EDGE_PX = 2  # pixels along such an edge left out of its cells (of SIDE / WARP_CELLS)


def warped_agreement(
    query: np.ndarray,
    query_size: tuple[float, float],
    flagged: np.ndarray,
    flagged_size: tuple[float, float],
    transform: np.ndarray,
    mirrored: bool = False,
    canvas: bool = False,
) -> float | None:
    """Share of grid cells whose colour agrees once the query is laid onto the flagged
    image by the keypoints' transform: what keeps a lattice of repeated keypoints
    (stripes, dots, bricks) from passing for a copy. Two layout thumbnails
    (:func:`layout_thumbnail`) with the sizes their keypoints were found at;
    ``transform`` maps query to flagged keypoint coordinates (of the flagged image's
    mirror when ``mirrored``). Counted over the cells the query covers, backdrop
    included, after both are standardised there with one gain and offset (brightness and
    contrast edits cancel out, a change of hue or backdrop does not); None when the query
    covers too few cells. Where the flagged thumbnail shows an object on a backdrop (its
    mask; the outer cells of a whole frame around trimmed content, ``canvas``), less than
    ``PART_FLOOR`` of the object's cells or of the backdrop's agreeing is the agreement.
    """
    # Greyscale means the whole picture, backdrop included: a black object on a coloured
    # backdrop is compared in colour.
    grey = is_grey(query[..., :3], 99.0) or is_grey(flagged[..., :3], 99.0)
    flagged = flagged[:, ::-1] if mirrored else flagged
    (fw, fh), (qw, qh) = flagged_size, query_size
    to_flagged = np.array([[fw / SIDE, 0, 0], [0, fh / SIDE, 0], [0, 0, 1]])
    to_query = np.array([[SIDE / qw, 0, 0], [0, SIDE / qh, 0], [0, 0, 1]])
    affine = np.vstack([transform, [0.0, 0.0, 1.0]])
    if abs(float(np.linalg.det(affine))) < 1e-9:
        return None
    # Flagged thumbnail pixel -> flagged keypoint coordinates -> query's -> query thumbnail.
    inverse = (to_query @ np.linalg.inv(affine) @ to_flagged)[:2]
    warped = cv2.warpAffine(
        np.ascontiguousarray(query[..., :3]),
        inverse,
        (SIDE, SIDE),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
    )
    # What the query covers of the flagged thumbnail and of a strip just outside it.
    around = _coverage(inverse, BEYOND_PX)
    covered = around[BEYOND_PX:-BEYOND_PX, BEYOND_PX:-BEYOND_PX]
    step = SIDE // WARP_CELLS

    # Where the query goes on past the edge of a flagged picture that fills its frame (a
    # photo, a texture: no backdrop in it), what lies beyond is a rotation's filled
    # corners, a border or padding, and the query's thumbnail blends it into the pixels
    # along that edge; a texture's cells differ by less than that blend (brick turned 5
    # degrees with black corners agreed at 0.62). Cells are averaged without the
    # outermost pixels on such sides (both images alike); a crop's own edges stay in. An
    # object on a backdrop is left as it is: its copies' fills are painted and trimmed,
    # and what goes past its box is a caption, whose edge cells are evidence.
    weight = np.ones((SIDE, SIDE, 1), np.float32)
    filled = flagged.shape[-1] < 4 or not flagged[..., 3].any()
    top, bottom, left, right = _beyond(around) if filled else (False,) * 4
    weight[:EDGE_PX] *= not top
    weight[SIDE - EDGE_PX :] *= not bottom
    weight[:, :EDGE_PX] *= not left
    weight[:, SIDE - EDGE_PX :] *= not right
    counts = weight.reshape(WARP_CELLS, step, WARP_CELLS, step, 1).sum(axis=(1, 3))

    def cells(a: np.ndarray) -> np.ndarray:
        a = a.reshape(SIDE, SIDE, -1).astype(np.float32) * weight
        return a.reshape(WARP_CELLS, step, WARP_CELLS, step, -1).sum(axis=(1, 3)) / counts

    inside = cells(covered)[..., 0] > 250
    if inside.sum() < 8:
        return None
    q, f = cells(warped), cells(np.ascontiguousarray(flagged[..., :3]))
    if grey:
        q, f = q.mean(axis=-1, keepdims=True), f.mean(axis=-1, keepdims=True)
    as_normalised = q, f  # each as normalised over its own content (layout_thumbnail)
    q, f = _standardised(q, inside), _standardised(f, inside)
    once = q, f  # standardised over all the covered cells
    # An opaque caption bar or a sticker shifts the statistics of the image it covers, and
    # with them every cell's standardised colour: standardise again over the cells that
    # agree best (both images over the same cells, so neither is flattened onto the other).
    chosen = inside
    for _ in range(REFITS):
        apart = np.abs(q - f).max(axis=-1)
        best = inside & (apart <= np.quantile(apart[inside], REFIT_SHARE))
        if np.array_equal(best, chosen):
            break  # standardising over the same cells again changes nothing
        if min(float(q[best].std()), float(f[best].std())) < REFIT_SPREAD:
            # The cells that agree best are one colour in either image (a white canvas
            # around a small object, a caption elsewhere on it): a gain cannot be told
            # from them, and standardising over them blew every difference up twelvefold
            # (a copy agreed at 0.01, 0.99 without the caption). Only no spread at all
            # stops it: at 12, a few caption bars over objects on white lost the refits
            # they need.
            break
        chosen = best
        q, f = _standardised(q, best), _standardised(f, best)
    apart = np.abs(q - f).max(axis=-1)
    share = float(((apart <= TOLERANCE) & inside).sum() / inside.sum())
    # The object and its backdrop must each agree in part: a product recoloured on the
    # same backdrop agrees by the backdrop alone, the same product on another backdrop by
    # the product alone (renders cut from one template). Only a floor is asked of each: a
    # caption or a bar covers part of either.
    objects, backdrop = _parts(flagged, f, canvas)
    where = backdrop & inside
    if where.sum() >= MIN_PART:
        agreed = float((apart[where] <= BACKDROP_TOLERANCE).mean())
        share = min(share, agreed) if agreed < PART_FLOOR else share
    where = objects & inside
    if where.sum() >= MIN_PART:
        # However the pixels were standardised, a recoloured object disagrees; a copy's
        # agrees under one of them at least: each as normalised over its own content,
        # standardised once over all covered cells, after the refits (a bar, a sticker),
        # and over the object's own cells (a plain backdrop clipped by a brightness edit).
        alone = _standardised(as_normalised[0], where), _standardised(as_normalised[1], where)
        agreed = max(
            float((np.abs(a - b).max(axis=-1)[where] <= TOLERANCE).mean())
            for a, b in (as_normalised, once, (q, f), alone)
        )
        share = min(share, agreed) if agreed < PART_FLOOR else share
    return share


def _parts(flagged: np.ndarray, cells: np.ndarray, canvas: bool) -> tuple[np.ndarray, np.ndarray]:
    """The flagged thumbnail's object cells and backdrop cells (of WARP_CELLS; either may
    be empty). Content has its mask: the backdrop showing there was normalised by the
    object's statistics, and clipped, so it is not weighed. A whole frame around trimmed
    content (``canvas``) shows its backdrop in its outer cells, and so does a picture
    whose outer cells are mostly one colour (a render on a blotched backdrop, which is
    not trimmed): cells of about that colour are backdrop, cells far from it object."""
    step = SIDE // WARP_CELLS
    none = np.zeros((WARP_CELLS, WARP_CELLS), dtype=bool)
    if flagged.shape[-1] == 4 and flagged[..., 3].any():
        share = flagged[..., 3].reshape(WARP_CELLS, step, WARP_CELLS, step).mean(axis=(1, 3))
        return share < 0.25 * 255, none
    ring = np.concatenate([cells[0], cells[-1], cells[1:-1, 0], cells[1:-1, -1]])
    colour = np.median(ring, axis=0)
    if not canvas and np.mean(np.abs(ring - colour).max(axis=-1) <= TOLERANCE) < RING_SHARE:
        return none, none
    apart = np.abs(cells - colour).max(axis=-1)
    objects, backdrop = apart > OBJECT_APART, apart <= TOLERANCE
    if not canvas and (objects.sum() < MIN_PART or backdrop.sum() < MIN_PART):
        return none, none  # a texture or a photo all of one tone: no object on a backdrop
    return objects, backdrop


def _coverage(inverse: np.ndarray, margin: int) -> np.ndarray:
    """255 where the query covers the flagged thumbnail grown by ``margin`` px each side
    (``inverse``: flagged thumbnail pixel to query thumbnail pixel)."""
    shifted = inverse.copy()
    shifted[:, 2] -= inverse[:, :2] @ np.array([margin, margin], dtype=np.float64)
    side = SIDE + 2 * margin
    return cv2.warpAffine(
        np.full((SIDE, SIDE), 255, np.uint8),
        shifted,
        (side, side),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
    )


def _beyond(around: np.ndarray) -> tuple[bool, bool, bool, bool]:
    """Whether the query goes on past the flagged thumbnail's top, bottom, left and right
    edges: covers more than ``BEYOND_SHARE`` of the ``BEYOND_PX`` strip outside each
    (``around``: :func:`_coverage`). A turn of two degrees leaves a sliver along each
    side, thickest at one end, and it blends into the edge cells all along."""
    m = BEYOND_PX
    inner = slice(m, -m)
    strips = (around[:m, inner], around[-m:, inner], around[inner, :m], around[inner, -m:])
    top, bottom, left, right = (float(strip.mean()) > BEYOND_SHARE * 255 for strip in strips)
    return top, bottom, left, right


def _standardised(cells: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Cells standardised with one gain and offset over ``where`` (mean 128, spread 48)."""
    sample = cells[where]
    return (cells - float(sample.mean())) / max(float(sample.std()), 4.0) * 48.0 + 128.0
