"""Moderation quality: near-duplicates of flagged images caught, unrelated images left alone.

Generated data, the demo model (real embeddings of this synthetic world), and the
production check (``FlaggedSet.check_bytes``: decode at model scale, embed, pHash, aligned
colour layout):

- flagged: ``--flagged`` product photos added to the flagged set;
- near-duplicates: each flagged photo under each transformation: JPEG re-encode at quality
  40-90, resize to 50-150%, crop up to 15%, horizontal flip, a text overlay;
- unrelated: ``--unrelated`` fresh product photos (the same catalog world, so many share
  category, colour and pattern with a flagged one) and photos of other scenes.

Prints recall per transformation and the false-quarantine rate on unrelated images for
the combined rule, against two baselines measured in the same run on the same images:
embedding only (cosine >= threshold) and a single pHash (no mirror/crop variants,
distance <= phash_strong).

Run: ``.venv/bin/python -m bench.moderation [--flagged 100] [--unrelated 1000]``
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.common import OUT, product_photos, table
from demo.catalog import DEMO_MODEL
from demo.synth import all_products, render
from services.encoder import Encoder
from services.images import decode_image
from services.index.edge import EdgeIndex
from services.moderation.flagged import FlaggedSet, hamming, phash
from services.settings import ImageLimits, ModerationSettings

TRANSFORMS = ["jpeg q40-90", "resize 50-150%", "crop <=15%", "hflip", "text overlay"]


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def transform(image: Image.Image, kind: str, rng: random.Random) -> bytes:
    """One near-duplicate of ``image``."""
    w, h = image.size
    if kind == "jpeg q40-90":
        return _jpeg(image, rng.randint(40, 90))
    if kind == "resize 50-150%":
        f = rng.uniform(0.5, 1.5)
        return _jpeg(
            image.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.LANCZOS)
        )
    if kind == "crop <=15%":
        fw, fh = rng.uniform(0, 0.15), rng.uniform(0, 0.15)
        cw, ch = int(w * (1 - fw)), int(h * (1 - fh))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return _jpeg(image.crop((x, y, x + cw, y + ch)))
    if kind == "hflip":
        return _jpeg(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    copy = image.copy()
    draw = ImageDraw.Draw(copy)
    font = ImageFont.load_default(size=rng.randint(h // 14, h // 9))
    text = rng.choice(["SALE -50%", "NEW IN", "limited edition", "@shop.example", "£19.99"])
    draw.text(
        (rng.randint(0, w // 3), rng.randint(0, h - h // 6)),
        text,
        fill="white",
        font=font,
        stroke_width=2,
        stroke_fill="black",
    )
    return _jpeg(copy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flagged", type=int, default=100)
    parser.add_argument("--unrelated", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image-threshold",
        type=float,
        default=0.995,
        help="cosine threshold for image entries; the demo model puts any two photos of its "
        "small synthetic world close together, so it needs a stricter one than real CLIP",
    )
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    policy = ModerationSettings(image_threshold=args.image_threshold)
    limits = ImageLimits()
    encoder = Encoder(str(DEMO_MODEL), batch_size=64)
    workdir = OUT / "moderation"
    shutil.rmtree(workdir, ignore_errors=True)
    index = EdgeIndex(workdir / "index")
    index.ensure_collection("flagged", encoder.identity)
    flagged = FlaggedSet(encoder, index, "flagged", policy, limits)

    combos = all_products()
    originals = [render(rng.choice(combos), 70_000_000 + i, size=320) for i in range(args.flagged)]
    t0 = time.perf_counter()
    for image in originals:
        flagged.add_image(_jpeg(image, 95), "prohibited", "bench")
    add_s = time.perf_counter() - t0
    snap = flagged.snapshot()
    single = {
        e.id: phash(decode_image(_jpeg(o, 95), limits).image)
        for e, o in zip(snap.entries, originals, strict=True)
    }

    probes: dict[str, list[bytes]] = {
        k: [transform(o, k, rng) for o in originals] for k in TRANSFORMS
    }
    n_catalog = int(args.unrelated * 0.8)
    probes["unrelated: catalog photos"] = [
        _jpeg(render(rng.choice(combos), 80_000_000 + i, size=320), 88) for i in range(n_catalog)
    ]
    probes["unrelated: other scenes"] = product_photos(
        args.unrelated - n_catalog, seed=args.seed + 5, size=(400, 300)
    )

    rows = []
    totals = {"emb": 0, "hash": 0, "combined": 0, "n": 0}
    check_s = 0.0
    checked = 0
    for name, items in probes.items():
        emb = one_hash = combined = 0
        for data in items:
            t1 = time.perf_counter()
            verdict = flagged.check_bytes(data)
            check_s += time.perf_counter() - t1
            checked += 1
            decoded = decode_image(data, limits, min_side=encoder.input_size)
            vector = encoder.encode_images([decoded.image])[0]
            h = phash(decoded.image)
            cos = snap.vectors @ vector
            thr = np.array([flagged.threshold(e) for e in snap.entries])
            emb += bool((cos >= thr).any())
            dist = hamming(h, np.array([single[e.id] for e in snap.entries], dtype=np.uint64))
            one_hash += bool((dist <= policy.phash_strong).any())
            combined += verdict.quarantined
        n = len(items)
        unrelated = name.startswith("unrelated")
        label = "false quarantine rate" if unrelated else "recall"
        rows.append(
            [name, label, f"{emb / n:.3f}", f"{one_hash / n:.3f}", f"{combined / n:.3f}", str(n)]
        )
        if not unrelated:
            totals["emb"] += emb
            totals["hash"] += one_hash
            totals["combined"] += combined
            totals["n"] += n
    n = totals["n"]
    rows.append(
        [
            "all near-duplicates",
            "recall",
            f"{totals['emb'] / n:.3f}",
            f"{totals['hash'] / n:.3f}",
            f"{totals['combined'] / n:.3f}",
            str(n),
        ]
    )
    print(
        f"flagged set: {args.flagged} images ({add_s / args.flagged * 1000:.1f} ms each to add); "
        f"model {DEMO_MODEL.name}; thresholds image {policy.image_threshold}, pHash strong "
        f"{policy.phash_strong} / weak {policy.phash_weak} (margin {policy.borderline_margin}), "
        f"layout {policy.layout_threshold} (floor {policy.layout_floor}, "
        f"{policy.layout_candidates} candidates)"
    )
    print(
        table(
            rows,
            ["probe set", "figure", "embedding only", "single pHash", "combined (production)", "n"],
        )
    )
    base = max(totals["emb"], 1)
    print(
        f"\ncombined recall vs embedding only: {totals['combined'] / base:.2f}x; "
        f"check latency {check_s / checked * 1000:.1f} ms/image (decode + embed + pHash + layout "
        "+ compare)"
    )
    index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
