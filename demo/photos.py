"""Real photographs from package data, and the edits copies of them go through.

scikit-image ships about twenty real photos and textures, scikit-learn two more; no
download is needed (both are test/bench extras). Products are often shot on white, so an
"object" here is a region of a photo composited onto a plain background at some size and
position. ``edit`` makes the near-duplicates a trust-and-safety team meets: recompressed,
resized, cropped, mirrored, captioned, rotated, brightened, greyed, padded.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

# Photos and textures of skimage.data (the ones bundled in its wheel).
SKIMAGE_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "horse",
    "rocket",
    "moon",
    "page",
    "text",
    "retina",
    "hubble_deep_field",
    "cell",
    "immunohistochemistry",
    "motorcycle_left",
    "clock",
    "logo",
)
TEXTURES = ("brick", "grass", "gravel")
EDITS = (
    "jpeg q30-90",
    "resize 50-150%",
    "crop <=20%",
    "mirror",
    "caption",
    "rotate +-5deg",
    "brightness +-30%",
    "contrast +-30%",
    "greyscale",
    "padding/border",
    # Harder forms of two of the above, as an outside attack on the check made them: the
    # corners a rotation exposes left black (as most editors leave them), and an opaque
    # banner with the text, across the top or bottom, over the object when it is there.
    "rotate +-5deg, black corners",
    "caption bar",
)


def _rgb(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        top = float(array.max()) or 1.0
        array = (array / top * 255.0).astype(np.uint8) if top <= 1.0 else array.astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def real_photos() -> dict[str, Image.Image]:
    """Every bundled photo and texture, by name (RGB)."""
    import skimage.data as data
    from sklearn.datasets import load_sample_images

    out: dict[str, Image.Image] = {}
    for name in (*SKIMAGE_PHOTOS, *TEXTURES):
        loader = getattr(data, name, None) or getattr(data, name.removesuffix("_left"), None)
        if loader is None:
            continue
        try:
            value = loader()
        except Exception:
            continue
        if isinstance(value, tuple):  # motorcycle: (left, right, disparity)
            value = value[0]
        out[name] = _rgb(np.asarray(value))
    sample = load_sample_images()
    for name, array in zip(("china", "flower"), sample.images, strict=True):
        out[name] = _rgb(array)
    return out


def region(image: Image.Image, rng: random.Random, least: float = 0.4) -> Image.Image:
    """A random region keeping at least ``least`` of each side: an "object" of a photo."""
    w, h = image.size
    cw, ch = int(w * rng.uniform(least, 1.0)), int(h * rng.uniform(least, 1.0))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((x, y, x + cw, y + ch))


def on_background(
    obj: Image.Image,
    rng: random.Random,
    colour: tuple[int, int, int] = (255, 255, 255),
    canvas: int = 480,
) -> Image.Image:
    """``obj`` pasted onto a plain canvas, at 35-80% of its side, anywhere on it."""
    out = Image.new("RGB", (canvas, canvas), colour)
    w, h = obj.size
    scale = rng.uniform(0.35, 0.8) * canvas / max(w, h)
    sized = obj.resize((max(8, int(w * scale)), max(8, int(h * scale))), Image.Resampling.LANCZOS)
    out.paste(sized, (rng.randint(0, canvas - sized.width), rng.randint(0, canvas - sized.height)))
    return out


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of an image."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def resized(image: Image.Image, rng: random.Random) -> Image.Image:
    """Resized by a random factor of 50-150%."""
    w, h = image.size
    f = rng.uniform(0.5, 1.5)
    return image.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.LANCZOS)


def cropped(image: Image.Image, rng: random.Random, most: float) -> Image.Image:
    """Up to ``most`` of each side cut off, anywhere."""
    w, h = image.size
    fw, fh = rng.uniform(0, most), rng.uniform(0, most)
    cw, ch = int(w * (1 - fw)), int(h * (1 - fh))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return image.crop((x, y, x + cw, y + ch))


def edit(image: Image.Image, kind: str, rng: random.Random) -> bytes:
    """One near-duplicate of ``image`` under an edit of ``EDITS``, as JPEG bytes."""
    w, h = image.size
    if kind == "jpeg q30-90":
        return jpeg(image, rng.randint(30, 90))
    if kind == "resize 50-150%":
        return jpeg(resized(image, rng))
    if kind == "crop <=20%":
        return jpeg(cropped(image, rng, 0.2))
    if kind == "mirror":
        return jpeg(ImageOps.mirror(image))
    if kind == "caption":
        copy = image.copy()
        font = ImageFont.load_default(size=rng.randint(max(8, h // 14), max(9, h // 9)))
        ImageDraw.Draw(copy).text(
            (rng.randint(0, w // 3), rng.randint(0, h - h // 6)),
            rng.choice(["SALE -50%", "NEW IN", "limited edition", "@shop.example", "£19.99"]),
            fill="white",
            font=font,
            stroke_width=2,
            stroke_fill="black",
        )
        return jpeg(copy)
    if kind == "rotate +-5deg":
        angle = rng.uniform(-5, 5)
        fill = image.getpixel((0, 0))
        return jpeg(image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=fill))
    if kind == "rotate +-5deg, black corners":
        angle = rng.choice([-1, 1]) * rng.uniform(2, 5)
        return jpeg(image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 0, 0)))
    if kind == "caption bar":
        copy = image.copy()
        bar = int(h * rng.uniform(0.12, 0.2))
        top = rng.random() < 0.5
        box = (0, 0, w, bar) if top else (0, h - bar, w, h)
        dark = rng.random() < 0.5
        draw = ImageDraw.Draw(copy)
        draw.rectangle(box, fill=(0, 0, 0) if dark else (255, 255, 255))
        font = ImageFont.load_default(size=max(8, int(bar * 0.6)))
        text = rng.choice(["SALE -50%", "NEW IN", "limited edition", "@shop.example", "£19.99"])
        draw.text((w // 20, box[1] + bar // 5), text, fill="white" if dark else "black", font=font)
        return jpeg(copy)
    if kind == "brightness +-30%":
        return jpeg(ImageEnhance.Brightness(image).enhance(rng.choice([0.7, 1.3])))
    if kind == "contrast +-30%":
        return jpeg(ImageEnhance.Contrast(image).enhance(rng.choice([0.7, 1.3])))
    if kind == "greyscale":
        return jpeg(ImageOps.grayscale(image).convert("RGB"))
    if kind == "padding/border":
        pad = int(max(w, h) * rng.uniform(0.05, 0.25))
        colour = rng.choice([(255, 255, 255), (0, 0, 0), (128, 128, 128)])
        return jpeg(ImageOps.expand(image, border=pad, fill=colour))
    raise ValueError(f"unknown edit {kind!r}")
