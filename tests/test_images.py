"""Image intake: every accepted format decodes to RGB; every bad input is refused by name."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.errors import ImageTooLarge, InvalidImage, UnsupportedFormat
from services.images import decode_image
from services.settings import ImageLimits
from tests.conftest import jpeg_bytes, png_bytes

LIMITS = ImageLimits()


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_allowed_formats_decode_to_rgb(fmt: str) -> None:
    img = Image.new("RGB", (30, 20), (200, 10, 10))
    decoded = decode_image(_save(img, fmt), LIMITS)
    assert decoded.format == fmt
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (30, 20)
    r, g, b = decoded.image.getpixel((15, 10))  # type: ignore[misc]
    assert r > 150 and g < 60 and b < 60


def test_format_is_decided_by_content_not_name() -> None:
    # PNG bytes are a PNG whatever the upload was called; the id is the content hash.
    data = png_bytes(1)
    a = decode_image(data, LIMITS)
    assert a.format == "PNG"
    import hashlib

    assert a.image_id == hashlib.sha256(data).hexdigest()


def test_alpha_is_composited_on_white() -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    rgb = decode_image(_save(img, "PNG"), LIMITS).image
    assert rgb.getpixel((5, 5)) == (255, 255, 255)


def test_palette_with_transparency_greyscale_and_1bit() -> None:
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 255] + [0] * 765)
    p.info["transparency"] = 0
    assert decode_image(_save(p, "PNG", transparency=0), LIMITS).image.getpixel((1, 1)) == (
        255,
        255,
        255,
    )
    grey = Image.new("L", (8, 8), 77)
    assert decode_image(_save(grey, "PNG"), LIMITS).image.getpixel((1, 1)) == (77, 77, 77)
    bw = Image.new("1", (8, 8), 1)
    assert decode_image(_save(bw, "PNG"), LIMITS).image.getpixel((1, 1)) == (255, 255, 255)


def test_16bit_greyscale_is_scaled_not_clipped() -> None:
    arr = np.zeros((4, 4), dtype=np.uint16)
    arr[:, 2:] = 65535
    img = Image.fromarray(arr)
    rgb = decode_image(_save(img, "PNG"), LIMITS).image
    assert rgb.getpixel((0, 0)) == (0, 0, 0)
    assert rgb.getpixel((3, 3)) == (255, 255, 255)


def test_cmyk_jpeg_converts() -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    rgb = decode_image(_save(img, "JPEG"), LIMITS).image
    r, g, b = rgb.getpixel((8, 8))  # type: ignore[misc]
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode_image(_save(img, "JPEG", exif=exif.tobytes()), LIMITS)
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.image.getpixel((10, 5))[0] > 200  # white now on top


def test_gif_first_frame_is_used() -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, g, _ = decode_image(data, LIMITS).image.getpixel((5, 5))  # type: ignore[misc]
    assert r > 200 and g < 50


def test_too_many_frames_refused() -> None:
    frames = [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(6)]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageTooLarge, match="frames"):
        decode_image(data, ImageLimits(max_frames=5))


def test_truncated_jpeg_refused() -> None:
    data = jpeg_bytes(3, size=(200, 200))
    with pytest.raises(InvalidImage, match=r"truncated|corrupt"):
        decode_image(data[: len(data) // 2], LIMITS)


def test_text_renamed_jpg_refused() -> None:
    with pytest.raises(InvalidImage, match="not a recognised image"):
        decode_image(b"just some text, not a picture\n" * 10, LIMITS)


def test_empty_refused() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"", LIMITS)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "SVG"),
        (b"%PDF-1.7\n1 0 obj\n", "PDF"),
        (b"8BPS\x00\x01" + b"\x00" * 40, "PSD"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "EPS"),
    ],
)
def test_other_formats_refused_by_name(data: bytes, name: str) -> None:
    with pytest.raises(UnsupportedFormat, match=name):
        decode_image(data, LIMITS)


def test_decompression_bomb_refused_from_header() -> None:
    # A 20000x20000 PNG compresses to a few hundred KB but would need 1.2 GB decoded.
    data = _save(Image.new("1", (20000, 20000)), "PNG")
    assert len(data) < LIMITS.max_bytes
    with pytest.raises(ImageTooLarge, match="decompression bomb"):
        decode_image(data, LIMITS)


def test_pixel_limit_checked_before_decoding() -> None:
    data = _save(Image.new("1", (8000, 6000)), "PNG")
    with pytest.raises(ImageTooLarge, match="8000x6000"):
        decode_image(data, LIMITS)


def test_oversized_bytes_refused() -> None:
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(b"\xff\xd8" + b"\0" * 5000, ImageLimits(max_bytes=4096))


def test_side_limit() -> None:
    data = _save(Image.new("RGB", (3000, 10)), "PNG")
    with pytest.raises(ImageTooLarge):
        decode_image(data, ImageLimits(max_side=2000))


def test_jpeg_decoded_at_model_scale_keeps_original_facts() -> None:
    img = Image.new("RGB", (1600, 1200), (20, 200, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _save(img, "JPEG", exif=exif.tobytes())
    full = decode_image(data, LIMITS)
    small = decode_image(data, LIMITS, min_side=224)
    assert (full.width, full.height) == (small.width, small.height) == (1200, 1600)
    assert full.image.size == (1200, 1600)
    # Decoded at 1/4 scale: still at least 224 on the short side, 16x fewer pixels.
    assert small.image.size == (300, 400)
    assert small.image_id == full.image_id


def test_truncated_jpeg_still_refused_at_model_scale() -> None:
    data = jpeg_bytes(3, size=(900, 900))
    with pytest.raises(InvalidImage, match=r"truncated|corrupt"):
        decode_image(data[: len(data) // 2], LIMITS, min_side=32)
