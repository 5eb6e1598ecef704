"""Measure the demo model on freshly generated images it never saw.

    .venv/bin/python -m demo.evaluate [--model models/sightline-demo-clip] [--n 400]

Prints zero-shot top-1 for category, colour and pattern over the 320 canonical prompts
("a photo of a red striped dress"), on seen and on held-out combinations, and the
precision@10 of text search for a few queries over a generated 500-product catalog,
through Sightline's own Encoder; then the auto-tags of the demo taxonomy on fresh images,
and OCR fusion's effect on cards that only carry a category's name as text.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from demo.catalog import DEMO_MODEL, catalog_items
from demo.synth import CATEGORIES, Product, all_products, held_out, render
from demo.taxonomy import demo_taxonomy, text_card
from services.encoder import Encoder
from services.images import decode_image
from services.ingest.intake import IngestItem
from services.settings import ImageLimits
from services.tagging.labels import embed_taxonomy
from services.tagging.ocr import RapidOcrReader
from services.tagging.scoring import score_vectors

QUERY_PRODUCTS = {
    "red striped dress": ("red", "striped", "dress"),
    "blue checked t-shirt": ("blue", "checked", "t-shirt"),
    "black plain shoe": ("black", "plain", "shoe"),
    "yellow dotted bag": ("yellow", "dotted", "bag"),
}
QUERIES = list(QUERY_PRODUCTS)


def zero_shot(encoder: Encoder, n: int, seed: int) -> dict[str, float]:
    """Top-1 per attribute over all canonical captions."""
    products = all_products()
    text = encoder.encode_texts([p.caption for p in products])
    hold = held_out()
    rng = random.Random(seed)
    out: dict[str, float] = {}
    for split, pool in (
        ("seen", [p for p in products if p not in hold]),
        ("held_out", sorted(hold, key=str)),
    ):
        truth = [rng.choice(pool) for _ in range(n)]
        images = encoder.encode_images([render(p, seed + i, size=256) for i, p in enumerate(truth)])
        best = (images @ text.T).argmax(axis=1)
        for attr in ("category", "colour", "pattern"):
            out[f"{split}_{attr}_top1"] = float(
                np.mean(
                    [
                        getattr(products[b], attr) == getattr(t, attr)
                        for b, t in zip(best, truth, strict=True)
                    ]
                )
            )
    return out


def search_catalog(n_random: int = 300, per_query: int = 12, seed: int = 11) -> list[IngestItem]:
    """Random products plus ``per_query`` fresh photos of each query's product, so a perfect
    ranking can fill the top 10 with relevant items."""
    items = list(catalog_items(n_random, seed=seed))
    for q, query in enumerate(QUERIES):
        colour, pattern, category = QUERY_PRODUCTS[query]
        product = Product(category, colour, pattern)
        for k in range(per_query):
            buf = io.BytesIO()
            render(product, seed * 7919 + q * 1000 + k, size=256).save(
                buf, format="JPEG", quality=90
            )
            meta = {"colour": colour, "pattern": pattern, "category": category}
            items.append(IngestItem(buf.getvalue(), f"{query}-{k}.jpg", meta))
    return items


def precision_at_10(encoder: Encoder) -> dict[str, float]:
    """Share of the top 10 text-search hits that are the queried colour, pattern and category."""
    items = search_catalog()
    images = [
        decode_image(it.data, ImageLimits(), min_side=encoder.input_size).image for it in items
    ]
    vectors = encoder.encode_images(images)
    out = {}
    for query in QUERIES:
        colour, pattern, category = QUERY_PRODUCTS[query]
        q = encoder.encode_texts([query])[0]
        top = np.argsort(-(vectors @ q))[:10]
        relevant = sum(
            (
                items[i].metadata["colour"],
                items[i].metadata["pattern"],
                items[i].metadata["category"],
            )
            == (colour, pattern, category)
            for i in top
        )
        out[f"precision@10 '{query}'"] = relevant / 10
    return out


def tagging(encoder: Encoder, n: int, seed: int) -> dict[str, float]:
    """Share of auto-tags (demo taxonomy, production scoring) that name the true attribute."""
    label_set = embed_taxonomy(encoder, demo_taxonomy())
    hold = held_out()
    rng = random.Random(seed)
    out: dict[str, float] = {}
    for split, pool in (
        ("seen", [p for p in all_products() if p not in hold]),
        ("held_out", sorted(hold, key=str)),
    ):
        truth = [rng.choice(pool) for _ in range(n)]
        vectors = encoder.encode_images([render(p, seed + i) for i, p in enumerate(truth)])
        results = score_vectors(encoder, vectors, label_set)
        for d, attr in enumerate(("category", "colour", "pattern")):
            out[f"tags {split}_{attr}"] = float(
                np.mean(
                    [
                        r.dimensions[d].assigned == [getattr(t, attr)]
                        for r, t in zip(results, truth, strict=True)
                    ]
                )
            )
    return out


def ocr_effect(encoder: Encoder, per_class: int = 5, seed: int = 50_000_000) -> dict[str, float]:
    """Category tags of cards that only carry the category's name, without and with OCR."""
    cards = [
        (c, text_card(c, seed + k * 100 + i))
        for k in range(per_class)
        for i, c in enumerate(CATEGORIES)
    ]
    vectors = encoder.encode_images([im for _, im in cards])
    reader = RapidOcrReader()
    texts = [
        " ".join(t for t, conf in reader.read(im) if conf >= 0.5).lower() or None for _, im in cards
    ]
    out = {}
    for ocr in (False, True):
        results = score_vectors(
            encoder, vectors, embed_taxonomy(encoder, demo_taxonomy(ocr)), texts
        )
        out[f"text cards category, OCR {'on' if ocr else 'off'}"] = float(
            np.mean(
                [r.dimensions[0].assigned == [c] for r, (c, _) in zip(results, cards, strict=True)]
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--n", type=int, default=400, help="images per split")
    parser.add_argument("--seed", type=int, default=30_000_000)
    args = parser.parse_args(argv)
    encoder = Encoder(str(args.model), batch_size=64)
    results = {
        **zero_shot(encoder, args.n, args.seed),
        **precision_at_10(encoder),
        **tagging(encoder, args.n, args.seed + 1),
        **ocr_effect(encoder),
    }
    width = max(len(k) for k in results)
    print(f"demo model {args.model.name}, fresh images (seed {args.seed}), {args.n} per split")
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
