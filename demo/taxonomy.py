"""The demo taxonomy (category, colour, pattern), and text-on-background images for OCR.

The demo model learnt captions that name a garment ("a photo of a red dress"), never a
bare colour, so each colour or pattern label averages one prompt per category (prompt
ensembling, as CLIP's authors did for ImageNet): the label's vector keeps the colour and
washes the garments out.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw, ImageFont

from demo.synth import CATEGORIES, COLOURS, PATTERNS
from services.tagging.taxonomy import Dimension, Label, OcrFusion, Taxonomy


def demo_taxonomy(ocr: bool = False) -> Taxonomy:
    """Three single-label dimensions over the demo world."""
    return Taxonomy(
        templates=["a photo of a {label}"],
        ocr=OcrFusion(enabled=ocr),
        dimensions=[
            Dimension(name="category", labels=[Label(name=c) for c in CATEGORIES]),
            Dimension(
                name="colour",
                labels=[
                    Label(name=c, prompts=[f"a photo of a {c} {cat}" for cat in CATEGORIES])
                    for c in COLOURS
                ],
            ),
            Dimension(
                name="pattern",
                labels=[
                    Label(name=p, prompts=[f"a photo of a {p} {cat}" for cat in CATEGORIES])
                    for p in PATTERNS
                ],
            ),
        ],
    )


def text_card(word: str, seed: int, size: int = 256) -> Image.Image:
    """A word printed on a plain, light background (a label, a sign, a price card)."""
    rng = random.Random(seed)
    shade = rng.randint(200, 240)
    image = Image.new("RGB", (size, size), (shade, shade, shade - rng.randint(0, 15)))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=rng.randint(size // 8, size // 6))
    text = word.upper() if rng.random() < 0.5 else word
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = rng.randint(4, max(5, int(size - (right - left) - 4)))
    y = rng.randint(4, max(5, int(size - (bottom - top) - 4)))
    draw.text((x, y), text, fill=(rng.randint(0, 60),) * 3, font=font)
    return image
