"""Image intake: bytes in, a validated RGB image out, or a specific error.

Formats are decided by content (Pillow's decoders restricted to an allow-list), never by
filename. Sizes are checked from the header before any pixel is decoded, so a
decompression bomb costs a header read, not gigabytes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.errors import ImageTooLarge, InvalidImage, UnsupportedFormat
from services.ids import sha256_hex
from services.settings import ImageLimits

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Signatures of formats people commonly upload that we refuse, to name them in the error.
_KNOWN_OTHER = (
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"PK\x03\x04", "ZIP"),
)


@dataclass(frozen=True)
class DecodedImage:
    """A validated upload: the RGB pixels plus the facts we store about the original."""

    image: Image.Image
    image_id: str
    format: str
    width: int
    height: int
    size_bytes: int


def _name_other_format(data: bytes) -> str | None:
    head = data[:64].lstrip()
    for magic, name in _KNOWN_OTHER:
        if head.startswith(magic):
            return name
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIC/AVIF"
    return None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB, compositing transparency on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        # 16-bit and float images: scale the real range to 0..255 rather than clipping.
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(scaled.round().astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


def decode_image(data: bytes, limits: ImageLimits, min_side: int | None = None) -> DecodedImage:
    """Validate and decode an upload.

    With ``min_side``, JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose
    shorter side stays at least ``min_side``: the whole stream is still read (so truncation
    is still detected), but a model that looks at 224 pixels does not pay for decoding 12
    megapixels. ``width`` and ``height`` always describe the original image.

    Raises:
        InvalidImage: empty, corrupt or truncated data.
        UnsupportedFormat: a recognisable file outside the allow-list.
        ImageTooLarge: over the byte, pixel, side or frame limits.
    """
    if not data:
        raise InvalidImage("empty upload: no bytes received")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as e:
        other = _name_other_format(data)
        if other:
            raise UnsupportedFormat(
                f"{other} files are not accepted; allowed formats: {', '.join(ALLOWED_FORMATS)}"
            ) from e
        raise InvalidImage("not a recognised image (corrupt, or not an image at all)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"image refused as a decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidImage(f"unreadable image header: {e}") from e

    fmt = img.format or "unknown"
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise ImageTooLarge(
            f"image is {width}x{height} ({width * height} pixels); limits are "
            f"{limits.max_pixels} pixels and {limits.max_side} pixels per side"
        )
    frames = getattr(img, "n_frames", 1)
    if frames > limits.max_frames:
        raise ImageTooLarge(f"image has {frames} frames; the limit is {limits.max_frames}")
    try:
        # PNG keeps EXIF after the pixels, so reading it may decode: inside the guard.
        orientation = img.getexif().get(0x0112, 1)
        orig_w, orig_h = (height, width) if orientation in _SWAPS_AXES else (width, height)
        img.seek(0)
        if min_side and fmt == "JPEG" and img.mode in ("RGB", "L", "CMYK", "YCbCr"):
            scale = min(width, height) / min_side
            if scale >= 2:
                img.draft(img.mode, (max(1, width // int(scale)), max(1, height // int(scale))))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            oriented = ImageOps.exif_transpose(img)
        rgb = _to_rgb(oriented if oriented is not None else img)
        rgb.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"image refused as a decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InvalidImage(f"corrupt or truncated {fmt} image: {e}") from e
    return DecodedImage(
        image=rgb,
        image_id=sha256_hex(data),
        format=fmt,
        width=orig_w,
        height=orig_h,
        size_bytes=len(data),
    )
