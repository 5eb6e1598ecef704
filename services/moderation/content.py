"""What in a picture is content: uniform borders and padding trimmed, brightness and
contrast normalised.

Product shots sit on white, copies get padded or framed, brightness and contrast get
nudged: pixel signals that compare whole frames then compare backgrounds. Every pixel
signal (hash, layout, keypoints) therefore looks at the content box, found by trimming
what matches the frame's colour, repeatedly (a frame around a white canvas around an
object), and at photometrically normalised values. Inside a plain canvas, the box holds
the substantial shapes only: a caption or watermark typed onto the white beside a
product is thin strokes, and would otherwise stretch the box and shrink the product in
it; so would a banner laid across the canvas's edge (an opaque caption bar), which is
trimmed with the canvas, or a translucent strip across it, whose colour is. Where a
rotation filled the corners around a plain canvas (black, as most editors leave them),
the fill is painted in the canvas's colour first, so the copy trims to its object as
the original did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

TRIM_TOLERANCE = 24  # largest per-channel difference (0-255) from the border colour
# A backdrop's soft shading (a vignette, a shadow) stays out of the content box: shapes
# must differ from the frame colour by more than this.
BOX_TOLERANCE = 40
TRIM_SHARE = 0.01  # a row or column of the shapes is content when this share of it differs
MIN_SHAPE = 0.15  # a shape is content when it weighs this share of the heaviest one
# A shape this low (share of the frame's height) and this many times as long as it is
# high is a line of text, weighed as light as a speck.
CAPTION_HEIGHT = 0.15
CAPTION_ASPECT = 3.0
MAX_CAPTIONS = 2
SCATTERED = 0.1  # light shapes holding more than this share of all weight: keep them all
_SOLID = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))  # strokes thinner vanish
_JOIN = np.ones((5, 5), np.uint8)
FRAME_SPREAD = 6  # how far (0-255) a frame pixel may sit from the frame's colour...
FRAME_SHARE = 0.45  # ...for this share of them, for the frame to be one colour
# A frame less than this over FRAME_SHARE was barely one colour: re-encoding a picture
# moves the share by a few thousandths either way (a flagged render at 0.448 was left
# whole, its captioned copy at 0.453 trimmed), so such a trim is one of two readings.
BARELY = 0.05
FLAT_SHARE = 0.98  # a row or column of padding: this share of it within FRAME_SPREAD
_WORK_SIDE = 256  # trimming works on a copy this size (fast, and steady under resizing)
MIN_CONTENT = 0.02  # a content box smaller than this share of the frame is no content
# Outside the box there may be specks and strokes (a caption beside a product: 3-5% of
# the area), not content: a frame that only looked uniform (a texture's mortar, a photo
# whose corners a rotation filled with one colour) leaves 11-15% there. Then nothing is
# trimmed, so the original and its edits keep the same content.
OUTSIDE_MAX = 0.08
# Images checked by pixels are decoded with at least this shorter side (JPEG DCT scaling
# stops there): keypoints are found at 320 px, and an object that fills a third of a
# product shot still has to keep its detail when the model itself looks at 64 or 224.
PIXEL_SIDE = 640
STD_FLOOR = 20.0  # the least spread (0-255) normalisation divides by
# The most of a picture a rotation's corner fill may cover: a square turned by 15 degrees
# leaves a third of its bounding box to the fill (1 - 1 / (cos + sin)^2).
MAX_FILL = 0.35
PLAIN_RING = 0.8  # the share of pixels just inside the fill that show one canvas colour
JPEG_BLEED = 4  # pixels a frame's colour bleeds into what it frames, once JPEG-compressed
# A banner laid across an edge of a plain canvas (an opaque caption bar, "SALE" on black):
# its outer and inner rows are this share one colour other than the canvas's, each row
# between at least BANNER_SHARE (the rest is its text), and it reaches at most
# BANNER_DEPTH of the picture in.
BANNER_EDGE = 0.9
BANNER_SHARE = 0.25
BANNER_DEPTH = 0.25


@dataclass(frozen=True)
class Content:
    """An image's content box and the colour it was trimmed from."""

    image: Image.Image  # the content, RGB
    background: tuple[int, int, int] | None  # the colour trimmed away (None: no frame)
    # The whole picture with a rotation's fill painted in the canvas's colour, where one
    # was (None: nothing was painted): the frame a copy is compared by.
    unfilled: Image.Image | None = None
    # Trimmed from a frame that was barely one colour (``BARELY``): a copy of the same
    # picture may as well have been left whole.
    barely: bool = False


def _frame_colour(a: np.ndarray) -> np.ndarray:
    frame = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return np.median(frame, axis=0)


def _uniform_share(a: np.ndarray, colour: np.ndarray) -> float:
    """The share of the frame's pixels within ``FRAME_SPREAD`` of ``colour``."""
    frame = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).astype(np.int16)
    return float((np.abs(frame - colour).max(axis=1) <= FRAME_SPREAD).mean())


def _frame_is_uniform(a: np.ndarray, colour: np.ndarray) -> bool:
    """A frame to trim is one colour (a canvas, padding, a border; an object may touch
    it), not a smooth wall or sky that merely has a typical colour: most of its pixels
    sit within a few levels of that colour."""
    return _uniform_share(a, colour) >= FRAME_SHARE


def _difference(a: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Per pixel, the largest channel difference (0-255) from the frame colour."""
    d = cv2.absdiff(a, np.full_like(a, np.clip(np.rint(colour), 0, 255).astype(np.uint8)))
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])


def _outside(differs: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Share of the pixels outside ``box`` that differ from the frame colour."""
    x0, y0, x1, y1 = box
    total = int(np.count_nonzero(differs))
    inside = int(np.count_nonzero(differs[y0:y1, x0:x1]))
    area = differs.size - (y1 - y0) * (x1 - x0)
    return (total - inside) / area if area > 0 else 0.0


def _box(differs: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box around the shapes that differ from the frame colour (``differs``: 1 where
    a pixel does). Shapes are weighed
    by their solid pixels (what an opening keeps), so specks (JPEG noise) and strokes (a
    caption's letters, solid or outlined) weigh next to nothing: a shape with less than
    ``MIN_SHAPE`` of the heaviest one's weight is left out, unless such light shapes
    add up to a good part of the picture (a scene, a texture). Nearby parts of one object
    join into one shape first (a small dilation)."""
    solid = cv2.morphologyEx(differs, cv2.MORPH_OPEN, _SOLID)
    if not solid.any():  # all strokes (a line drawing): weigh every pixel
        solid = differs
    joined = cv2.dilate(solid, _JOIN)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    if count < 2:
        return None
    weight = np.bincount(labels[solid.astype(bool)], minlength=count)
    weight[0] = 0
    light = (weight > 0) & (weight < MIN_SHAPE * weight.max())
    if weight[light].sum() > SCATTERED * weight.sum():
        light[:] = False  # many shapes of every size: a scene or a texture, keep it whole
    # A line or two of text typed over the backdrop beside the object: low, long bands,
    # light whatever they weigh (bold letters with an outline weigh a quarter of a
    # product). More of them, or heavier than the object, are a pattern: kept.
    width, height = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    line = (
        (weight > 0)
        & (height <= CAPTION_HEIGHT * differs.shape[0])
        & (width >= CAPTION_ASPECT * height)
    )
    heaviest = int(np.argmax(weight))
    # When the object itself is a band (a strip, a line of a poster), text is content.
    if not line[heaviest] and 0 < line.sum() <= MAX_CAPTIONS and weight[line].sum() < weight.max():
        light |= line
    keep = np.flatnonzero((weight > 0) & ~light)
    # The kept shapes with their thin parts (a stroke touching them) back.
    region = cv2.dilate(np.isin(labels, keep).astype(np.uint8), _JOIN).astype(bool)
    mask = region & differs.astype(bool)
    rows = np.flatnonzero(mask.mean(axis=1) > TRIM_SHARE)
    cols = np.flatnonzero(mask.mean(axis=0) > TRIM_SHARE)
    if len(rows) < 2 or len(cols) < 2:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _corners(fill: np.ndarray) -> np.ndarray:
    """Of what the border reaches, the triangles a rotation leaves at the corners: at each
    corner, the part under the line between where the fill ends along its two borders. A
    dark object that touches the canvas's edge joins the fill's colour, but lies past that
    line (inside the turned canvas), so it is not painted over with it. Padding around the
    whole frame runs along whole sides: its triangles cover the picture, and it is kept."""
    h, w = fill.shape
    ys, xs = np.mgrid[0:h, 0:w]
    keep = np.zeros_like(fill)
    for flip_y, flip_x in ((False, False), (False, True), (True, False), (True, True)):
        f = fill[::-1] if flip_y else fill
        f = f[:, ::-1] if flip_x else f
        along = np.flatnonzero(~f[0])  # the fill's run along the corner's row...
        down = np.flatnonzero(~f[:, 0])  # ...and down its column
        a = float(along[0]) if len(along) else float(w)
        b = float(down[0]) if len(down) else float(h)
        if a == 0 or b == 0:
            continue
        x = (w - 1 - xs) if flip_x else xs
        y = (h - 1 - ys) if flip_y else ys
        # A pixel or two of slack for the blended edge along the line.
        keep |= x / (a + 2.0) + y / (b + 2.0) <= 1.0
    return fill & keep


def _banners(small: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Where banners lie across the canvas's edges (True), so the box holds the object
    and not the bar under it. Beside a small object a banner is most of what differs from
    the canvas: the box would run from edge to edge, and the object, shrunk in it, fall
    out of the scale range keypoints are matched over."""
    out = np.zeros(small.shape[:2], bool)
    for turns in range(4):  # top, then each other edge turned to the top
        a = np.rot90(small, turns)
        band = np.rot90(out, turns)  # a view: writing to it writes to ``out``
        edge = np.median(a[0], axis=0)
        if float(np.abs(edge - colour).max()) <= BOX_TOLERANCE:
            continue  # the canvas itself runs along this edge
        near = _difference(a, edge) <= FRAME_SPREAD * 2
        shares = near.mean(axis=1)
        if shares[0] < BANNER_EDGE:
            continue
        deepest = int(BANNER_DEPTH * a.shape[0])
        run = int(np.argmin(np.append(shares[:deepest] >= BANNER_SHARE, False)))
        edges = np.flatnonzero(shares[:run] >= BANNER_EDGE)  # its inner margin, the last
        if len(edges):  # none in a picture too low for a banner
            band[: edges[-1] + 1] = True
    for turns in (0, 1):  # strips across the middle, along rows, then along columns
        a = np.rot90(small, turns)
        np.rot90(out, turns)[_strips(a, colour)] = True
    return out


def _strips(a: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The pixels of strips laid across the canvas from side to side (a translucent
    band, a ribbon): rows whose two ends show one colour other than the canvas's, as
    most of the row does, no more than ``BANNER_DEPTH`` of them in a run. Only the
    strip's own colour is taken, so an object it crosses keeps its box; a strip beside
    a small object made the box three times the object's height."""
    ends = a[:, [0, -1]].astype(np.int16)
    tone = ends.mean(axis=1)
    rows = (np.abs(ends[:, 0] - ends[:, 1]).max(axis=1) <= FRAME_SPREAD * 2) & (
        np.abs(tone - colour).max(axis=1) > BOX_TOLERANCE
    )
    out = np.zeros(a.shape[:2], bool)
    if not rows.any():
        return out  # most pictures: the canvas reaches both sides of every row
    near = np.zeros(a.shape[:2], bool)
    picked = np.flatnonzero(rows)
    near[picked] = (
        np.abs(a[picked].astype(np.int16) - tone[picked, None, :]).max(axis=2) <= FRAME_SPREAD * 2
    )
    rows &= near.mean(axis=1) >= BANNER_SHARE
    start = None
    for y, flag in enumerate([*rows.tolist(), False]):
        if flag and start is None:
            start = y
        elif not flag and start is not None:
            if 2 <= y - start <= BANNER_DEPTH * a.shape[0]:
                out[start:y] = near[start:y]
            start = None
    return out


def _unfilled(full: np.ndarray) -> np.ndarray:
    """The image with what a rotation filled around a plain canvas (black corners, as
    most editors leave them) painted in the canvas's colour, so the canvas trims as the
    original's did. The fill is the frame's colour (a turn that grew the picture to fit),
    or the colour all four corners share (one that kept its size: the canvas still runs
    along most of the border). Only where the fill holds less than ``MAX_FILL`` of the
    picture and just inside it lies one other plain colour (a canvas, not a photo: a
    photo padded in black keeps its padding, which trims as before)."""
    h, w = full.shape[:2]
    scale = min(1.0, _WORK_SIDE / max(w, h))
    small = cv2.resize(
        full, (max(2, round(w * scale)), max(2, round(h * scale))), interpolation=cv2.INTER_AREA
    )
    for colour in _fill_colours(small):
        mask, canvas = _fill(small, colour)
        if mask is not None and canvas is not None:
            big = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
            out = full.copy()
            out[big.astype(bool)] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
            return out
    return full


def _fill_colours(small: np.ndarray) -> list[np.ndarray]:
    """The colours a rotation's fill may have: the frame's, where the frame is one
    colour, and the one the four corner pixels share where it is another."""
    out = []
    colour = _frame_colour(small)
    if _frame_is_uniform(small, colour):
        out.append(colour)
    corners = np.stack([small[0, 0], small[0, -1], small[-1, 0], small[-1, -1]]).astype(np.int16)
    shared = np.median(corners, axis=0)
    if (np.abs(corners - shared).max() <= FRAME_SPREAD * 2) and (
        not out or np.abs(shared - colour).max() > BOX_TOLERANCE
    ):
        out.append(shared)
    return out


def _fill(small: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The fill of ``colour`` (in the corner triangles) and the canvas colour just inside
    it, or (None, None) where that is not a rotation's fill around a plain canvas."""
    near = (_difference(small, colour) <= FRAME_SPREAD * 2).astype(np.uint8)
    _, labels = cv2.connectedComponents(near, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = _corners(np.isin(labels, edge[edge > 0]) & near.astype(bool))
    if not fill.any() or fill.mean() > MAX_FILL:
        return None, None
    # Past the blended edge a rotation leaves (a pixel or two), within a few more.
    grown = [cv2.dilate(fill.astype(np.uint8), np.ones((k, k), np.uint8)) for k in (5, 11)]
    ring = grown[1].astype(bool) & ~grown[0].astype(bool)
    inside = small[ring]
    if len(inside) == 0:
        return None, None
    canvas = np.median(inside, axis=0)
    plain = float((np.abs(inside.astype(np.int16) - canvas).max(axis=1) <= FRAME_SPREAD * 2).mean())
    if plain < PLAIN_RING or float(np.abs(canvas - colour).max()) <= BOX_TOLERANCE:
        return None, None
    return fill, canvas


def _shrunk(region: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return region
    h, w = region.shape[:2]
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    return cv2.resize(region, size, interpolation=cv2.INTER_AREA)


def _inset(
    full: np.ndarray,
    box: tuple[int, int, int, int],
    trimmed: tuple[int, int, int],
    scale: float,
) -> tuple[int, int, int, int] | None:
    """``box`` without the sliver of the frame just trimmed, or None where there is
    none to take off.

    The box is found on a shrunk copy (``scale``), whose pixel across the frame's edge
    blends frame and canvas, and JPEG bleeds a frame's colour a few pixels into the
    canvas (chroma at half resolution). Along a canvas padded in another colour, that
    sliver became the next pass's frame, or made it look uneven, and the canvas inside
    was never trimmed (a small object padded in blue or yellow kept its whole 480 px
    canvas). The box taken that many pixels in counts when its frame is one colour
    other than the one trimmed (``trimmed``)."""
    left, top, right, bottom = box
    m = math.ceil(1 / scale) + JPEG_BLEED
    if right - left <= 4 * m or bottom - top <= 4 * m:
        return None
    inner = full[top + m : bottom - m, left + m : right - m]
    small = _shrunk(inner, min(1.0, _WORK_SIDE / max(inner.shape[:2])))
    colour = _frame_colour(small)
    if _frame_is_uniform(small, colour) and float(np.abs(colour - trimmed).max()) > BOX_TOLERANCE:
        return left + m, top + m, right - m, bottom - m
    return None


def content(image: Image.Image) -> Content | None:
    """The image with uniform borders trimmed (up to three frames), or None when nothing
    but a uniform colour is left (no content to compare by pixels)."""
    rgb = image.convert("RGB")
    pixels = np.asarray(rgb)
    full = _unfilled(pixels)
    if full is not pixels:
        rgb = Image.fromarray(full)
    background: tuple[int, int, int] | None = None
    left, top, right, bottom = 0, 0, rgb.size[0], rgb.size[1]  # the box so far, in pixels
    scale = 1.0
    barely = False
    for _ in range(3):
        w, h = right - left, bottom - top
        region = full[top:bottom, left:right]
        small = _shrunk(region, min(1.0, _WORK_SIDE / max(w, h)))
        colour = _frame_colour(small)
        share = _uniform_share(small, colour)
        uniform = share >= FRAME_SHARE
        if background is None:
            barely = share < FRAME_SHARE + BARELY
        inset = None
        if background is not None and (
            not uniform or float(np.abs(colour - background).max()) <= BOX_TOLERANCE
        ):
            inset = _inset(full, (left, top, right, bottom), background, scale)
        if inset is not None:  # a sliver of the last frame around another one
            left, top, right, bottom = inset
            w, h = right - left, bottom - top
            region = full[top:bottom, left:right]
            small = _shrunk(region, min(1.0, _WORK_SIDE / max(w, h)))
            colour = _frame_colour(small)
        elif not uniform:
            break
        scale = min(1.0, _WORK_SIDE / max(w, h))
        differs = (_difference(small, colour) > BOX_TOLERANCE).astype(np.uint8)
        if background is None:  # banners are laid over the picture as a whole
            differs[_banners(small, colour)] = 0
        box = _box(differs)
        if box is None:
            return None
        if _outside(differs, box) > OUTSIDE_MAX:
            break  # what lies outside is content too: keep the whole frame
        # Round inwards: a sliver of the frame left at an edge would stop the next pass.
        x0, y0 = (math.ceil(v / scale) for v in box[:2])
        x1, y1 = (math.floor(v / scale) for v in box[2:])
        if (x1 - x0) * (y1 - y0) < MIN_CONTENT * w * h:
            return None
        if (x0, y0, x1, y1) == (0, 0, w, h):
            break
        background = (int(colour[0]), int(colour[1]), int(colour[2]))
        left, top, right, bottom = left + x0, top + y0, left + min(w, x1), top + min(h, y1)
    unfilled = rgb if full is not pixels else None
    if (left, top, right, bottom) != (0, 0, *rgb.size):
        rgb = rgb.crop((left, top, right, bottom))
    return Content(rgb, background, unfilled, barely and background is not None)


def unpadded(image: Image.Image) -> Image.Image:
    """The image without a flat border of one colour (padding, a mat), and nothing more.

    ``content`` trims to what differs from the border colour by more than
    ``BOX_TOLERANCE``, which is right for a canvas but goes too far when a photo's own
    backdrop is close to the padding's colour (a grey wall padded in grey): the box then
    holds only what stands out of the wall, too small to verify. Padding is flatter than
    any photo, so rows and columns are trimmed here only while nearly all their pixels sit
    within ``FRAME_SPREAD`` of the border colour."""
    rgb = image.convert("RGB")
    a = np.asarray(rgb)
    colour = _frame_colour(a)
    if not _frame_is_uniform(a, colour):
        return rgb
    flat = _difference(a, colour) <= FRAME_SPREAD
    rows = np.flatnonzero(flat.mean(axis=1) < FLAT_SHARE)
    cols = np.flatnonzero(flat.mean(axis=0) < FLAT_SHARE)
    if len(rows) < 2 or len(cols) < 2:
        return rgb
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return rgb if box == (0, 0, *rgb.size) else rgb.crop(box)


def normalised(values: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Standardisation with one gain and offset for every channel (mean 128, spread 48):
    a brightness or contrast change (the same affine change of every channel) leaves the
    result unchanged, a change of hue does not. (Per channel, a purple shirt on beige and
    a blue one on red would standardise to the same picture.) The statistics are taken
    over the ``keep`` pixels when given (the content, not the backdrop showing between
    its parts: a rotated copy's box holds more of it than the original's)."""
    v = values.astype(np.float32)
    sample = v[keep] if keep is not None and keep.sum() >= 16 else v
    mean, std = float(sample.mean()), float(sample.std())
    # A flat object (a plain shirt) has next to no spread: a floor keeps its colour from
    # being stretched to the clipping points, where a black and a red shirt look alike.
    out = (v - mean) / max(std, STD_FLOOR) * 48.0 + 128.0
    return np.clip(out, 0, 255)


def is_grey(rgb: np.ndarray, percentile: float = 90.0) -> bool:
    """True when an image carries (almost) no colour: compare it by luminance. A higher
    ``percentile`` asks that nearly all of it be grey (a greyscaled copy is, a black
    shirt on a brown backdrop is not)."""
    a = rgb.astype(np.int16)
    chroma = a.max(axis=-1) - a.min(axis=-1)
    return float(np.percentile(chroma, percentile)) < 12.0
