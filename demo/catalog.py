"""The demo catalog: generated products with metadata, ingested through the normal path."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from demo.synth import Product, all_products, price, render, title
from services.ingest.intake import IngestItem

DEMO_MODEL = Path(__file__).resolve().parent.parent / "models" / "sightline-demo-clip"


def catalog_items(n_products: int = 500, seed: int = 7, size: int = 256) -> Iterator[IngestItem]:
    """``n_products`` products as JPEG uploads; about one in five has a second photo."""
    rng = random.Random(seed)
    combos = all_products()
    for n in range(n_products):
        product: Product = rng.choice(combos)
        meta = {
            "product_id": f"SKU-{n:05d}",
            "title": title(product, rng),
            "brand": title(product, rng).split()[0],
            "price": price(product, rng),
            "category": product.category,
            "colour": product.colour,
            "pattern": product.pattern,
        }
        photos = 2 if rng.random() < 0.2 else 1
        for k in range(photos):
            buf = io.BytesIO()
            render(product, seed * 1_000_003 + n * 7 + k, size=size).save(
                buf, format="JPEG", quality=90
            )
            yield IngestItem(buf.getvalue(), f"{meta['product_id']}-{k + 1}.jpg", dict(meta))


def flagged_examples() -> list[tuple[bytes, str, str]]:
    """A small demo flagged set: three 'counterfeit' product photos (bytes, category, note)."""
    out = []
    for n, product in enumerate(
        [
            Product("bag", "black", "checked"),
            Product("shoe", "white", "striped"),
            Product("hat", "purple", "dotted"),
        ]
    ):
        buf = io.BytesIO()
        render(product, 424_242 + n, size=320).save(buf, format="JPEG", quality=92)
        out.append((buf.getvalue(), "counterfeit", f"known counterfeit {product.caption[11:]}"))
    return out


def flagged_copies() -> list[IngestItem]:
    """Uploads that copy the flagged photos (mirrored, shrunk, re-encoded): quarantined on ingest."""
    items = []
    for n, (data, _, _) in enumerate(flagged_examples()):
        with Image.open(io.BytesIO(data)) as image:
            copy = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((240, 240))
        buf = io.BytesIO()
        copy.save(buf, format="JPEG", quality=70)
        meta = {
            "product_id": f"SKU-X{n:04d}",
            "title": "Suspiciously cheap designer item",
            "price": 9.99,
        }
        items.append(IngestItem(buf.getvalue(), f"SKU-X{n:04d}-1.jpg", meta))
    return items
