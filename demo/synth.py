"""Procedural product images: category x colour x pattern, drawn with Pillow.

Varied size, position, rotation and background, so a model must learn the attributes,
not pixel positions. Deterministic for a given seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = ["t-shirt", "dress", "trousers", "skirt", "shoe", "bag", "hat", "jacket"]
COLOURS = {
    "red": (205, 30, 35),
    "orange": (240, 130, 20),
    "yellow": (245, 215, 35),
    "green": (40, 150, 60),
    "blue": (35, 75, 200),
    "purple": (125, 50, 165),
    "pink": (245, 135, 185),
    "brown": (120, 70, 35),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}
PATTERNS = ["plain", "striped", "dotted", "checked"]
BRANDS = ["Northwind", "Acme", "Lumen", "Kestrel", "Oakline", "Vela", "Marlow", "Tessaro"]

# Silhouettes on a unit square (x right, y down), drawn as polygons or ellipses.
_SHAPES: dict[str, list[list[tuple[float, float]]]] = {
    "t-shirt": [
        [
            (0.3, 0.1),
            (0.42, 0.16),
            (0.58, 0.16),
            (0.7, 0.1),
            (0.95, 0.3),
            (0.82, 0.42),
            (0.74, 0.36),
            (0.74, 0.92),
            (0.26, 0.92),
            (0.26, 0.36),
            (0.18, 0.42),
            (0.05, 0.3),
        ]
    ],
    "dress": [[(0.4, 0.05), (0.6, 0.05), (0.64, 0.35), (0.9, 0.95), (0.1, 0.95), (0.36, 0.35)]],
    "trousers": [
        [
            (0.28, 0.05),
            (0.72, 0.05),
            (0.8, 0.95),
            (0.57, 0.95),
            (0.5, 0.35),
            (0.43, 0.95),
            (0.2, 0.95),
        ]
    ],
    "skirt": [[(0.32, 0.2), (0.68, 0.2), (0.92, 0.8), (0.08, 0.8)]],
    "shoe": [[(0.08, 0.45), (0.38, 0.45), (0.5, 0.58), (0.9, 0.66), (0.94, 0.8), (0.08, 0.8)]],
    "bag": [[(0.15, 0.38), (0.85, 0.38), (0.9, 0.9), (0.1, 0.9)]],
    "hat": [
        [(0.05, 0.7), (0.95, 0.7), (0.95, 0.8), (0.05, 0.8)],
        [(0.25, 0.72), (0.3, 0.3), (0.7, 0.3), (0.75, 0.72)],
    ],
    "jacket": [
        [
            (0.28, 0.06),
            (0.5, 0.2),
            (0.72, 0.06),
            (0.95, 0.25),
            (0.95, 0.95),
            (0.78, 0.95),
            (0.78, 0.45),
            (0.72, 0.45),
            (0.72, 0.95),
            (0.28, 0.95),
            (0.28, 0.45),
            (0.22, 0.45),
            (0.22, 0.95),
            (0.05, 0.95),
            (0.05, 0.25),
        ]
    ],
}


@dataclass(frozen=True)
class Product:
    """What a generated image shows."""

    category: str
    colour: str
    pattern: str

    @property
    def caption(self) -> str:
        """The canonical caption, as used for zero-shot prompts."""
        return f"a photo of a {self.colour} {self.pattern} {self.category}"


def all_products() -> list[Product]:
    """Every category x colour x pattern combination."""
    return [Product(c, col, p) for c in CATEGORIES for col in COLOURS for p in PATTERNS]


def held_out() -> set[Product]:
    """Combinations never shown in training (about 10%), to test generalisation."""
    rng = random.Random(1234)
    combos = all_products()
    return set(rng.sample(combos, len(combos) // 10))


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (20, 20, 20) if lum > 140 else (240, 240, 240)


def _background(rng: random.Random, size: int, avoid: tuple[int, int, int]) -> Image.Image:
    while True:
        base = tuple(rng.randint(60, 230) for _ in range(3))
        if sum(abs(a - b) for a, b in zip(base, avoid, strict=True)) > 160:
            break
    img = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(0, 3)):  # soft blotches, like a studio backdrop
        x, y, r = rng.randint(0, size), rng.randint(0, size), rng.randint(size // 6, size // 2)
        shade = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in base)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=shade)
    return img.filter(ImageFilter.GaussianBlur(size / 24))


def _pattern(
    pattern: str, colour: tuple[int, int, int], size: int, rng: random.Random
) -> Image.Image:
    img = Image.new("RGB", (size, size), colour)
    if pattern == "plain":
        return img
    ink = _contrast(colour)
    draw = ImageDraw.Draw(img)
    step = max(6, size // rng.randint(7, 10))
    if pattern == "striped":
        for x in range(0, size, step):
            draw.rectangle((x, 0, x + step // 2 - 1, size), fill=ink)
        return img.rotate(
            rng.choice([0, 90, 45]), resample=Image.Resampling.NEAREST, fillcolor=colour
        )
    if pattern == "dotted":
        r = max(2, step // 4)
        for y in range(step // 2, size, step):
            for x in range(step // 2 + (step // 2 if (y // step) % 2 else 0), size, step):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)
        return img
    for y in range(0, size, step):  # checked
        for x in range(0, size, step):
            if (x // step + y // step) % 2:
                draw.rectangle((x, y, x + step - 1, y + step - 1), fill=ink)
    return img


def render(product: Product, seed: int, size: int = 256) -> Image.Image:
    """Draw one product photo."""
    rng = random.Random(seed)
    colour = COLOURS[product.colour]
    canvas = _background(rng, size, colour)
    scale = rng.uniform(0.55, 0.9)
    item = int(size * scale)
    mask = Image.new("L", (item, item), 0)
    draw = ImageDraw.Draw(mask)
    for poly in _SHAPES[product.category]:
        draw.polygon([(x * item, y * item) for x, y in poly], fill=255)
    fill = _pattern(product.pattern, colour, item, rng)
    angle = rng.uniform(-20, 20)
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    fill = fill.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    # Outline so white items stay visible on light backdrops.
    edge = mask.filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 40 else 0)
    span = size - item
    x = rng.randint(0, max(0, span))
    y = rng.randint(0, max(0, span))
    canvas.paste(fill, (x, y), mask)
    canvas.paste(Image.new("RGB", (item, item), (60, 60, 60)), (x, y), edge)
    if rng.random() < 0.5:  # a little lighting variation
        factor = rng.uniform(0.85, 1.15)
        canvas = canvas.point(lambda v: int(max(0, min(255, v * factor))))
    return canvas


def caption_phrasings(product: Product) -> list[str]:
    """Every phrasing of a product's full caption that training uses."""
    c, col, p = product.category, product.colour, product.pattern
    return [
        f"a photo of a {col} {p} {c}",
        f"a {col} {p} {c}",
        f"{col} {p} {c}",
        f"a product photo of a {col} {p} {c}",
        f"a photo of a {p} {col} {c}",
    ]


def caption_variants(product: Product, rng: random.Random) -> str:
    """A training caption: one of several phrasings of the same facts."""
    return rng.choice(caption_phrasings(product))


def title(product: Product, rng: random.Random) -> str:
    """A catalog title."""
    brand = rng.choice(BRANDS)
    pattern = "" if product.pattern == "plain" else f"{product.pattern} "
    return f"{brand} {product.colour} {pattern}{product.category}"


def price(product: Product, rng: random.Random) -> float:
    """A plausible price."""
    base = {
        "t-shirt": 15,
        "dress": 45,
        "trousers": 40,
        "skirt": 30,
        "shoe": 60,
        "bag": 55,
        "hat": 20,
        "jacket": 90,
    }[product.category]
    return round(base * rng.uniform(0.6, 1.8), 2)
