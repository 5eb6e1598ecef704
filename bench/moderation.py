"""Moderation quality: near-duplicates of flagged images caught, unrelated images left alone.

Two worlds, each through the production check (``FlaggedSet.check_bytes``: decode at model
scale, embed, then the pixel signals of the content: keypoints, aligned layout, pHash):

- **real photos** (the headline): scikit-image's and scikit-learn's bundled photographs.
  Flagged: objects (regions of photos) composited onto white at some size and position,
  photos as they are, and a texture. Near-duplicates: each flagged image under each edit
  of ``demo.photos.EDITS`` (JPEG q30-90, resize 50-150%, crop <=20%, mirror, caption,
  rotation +-5 degrees, brightness and contrast +-30%, greyscale, padding/border; and two
  harder forms an outside attack used: rotation with black corners, an opaque caption
  bar).
  Unrelated: other photos as they are and cropped, their regions on white, grey and black
  backgrounds at other sizes and positions, and textures.
- **synthetic** (the demo world): demo-catalog product photos flagged; near-duplicates by
  JPEG, resize, crop <=15%, flip, text overlay; unrelated catalog photos (many of the
  same category, colour and pattern) and other scenes.

Each table gives recall per edit and the false-quarantine rate on unrelated images, for
the production rule and for its embedding and pixel halves alone, measured in the same
run on the same images, plus the latency of a check; and, in the same run, a check's two
nearest-neighbour steps (keypoint matching, keypoint votes) against the OpenCV ones they
replaced.

Run: ``.venv/bin/python -m bench.moderation [--world real|synthetic|both] [--seed 0]``
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import faiss
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.common import OUT, product_photos, table
from demo.catalog import DEMO_MODEL
from demo.photos import (
    EDITS,
    TEXTURES,
    cropped,
    edit,
    jpeg,
    on_background,
    real_photos,
    region,
    resized,
)
from demo.synth import all_products, render
from services.encoder import Encoder
from services.index.edge import EdgeIndex
from services.moderation.content import content
from services.moderation.flagged import (
    VOTE_DISTANCE,
    VOTERS,
    FlaggedSet,
    Pixels,
    _vote_index,
    _voting_views,
    vote_codes,
)
from services.moderation.keypoints import features as keypoint_features
from services.moderation.keypoints import two_nearest
from services.settings import ImageLimits, ModerationSettings

# Real photos: which bundled images are flagged, and how.
FLAGGED_ON_WHITE = ("chelsea", "coffee", "rocket", "astronaut", "coins", "china")
FLAGGED_AS_IS = ("camera", "flower", "immunohistochemistry", "clock")
FLAGGED_TEXTURE = ("brick",)
SYNTHETIC_EDITS = ["jpeg q40-90", "resize 50-150%", "crop <=15%", "hflip", "text overlay"]


@dataclass
class World:
    """Flagged images (JPEG bytes) and probes per set (near-duplicates or unrelated)."""

    name: str
    flagged: list[bytes]
    probes: dict[str, list[bytes]]


def real_world(rng: random.Random, draws: int, unrelated_per_source: int) -> World:
    """Flagged objects, photos and a texture; their edits; unrelated photos and objects."""
    photos = real_photos()
    flagged_images: list[Image.Image] = []
    for name in FLAGGED_ON_WHITE:
        flagged_images.append(on_background(region(photos[name], rng, 0.5), rng))
    flagged_images += [photos[n] for n in (*FLAGGED_AS_IS, *FLAGGED_TEXTURE)]
    probes = {
        kind: [edit(im, kind, rng) for im in flagged_images for _ in range(draws)] for kind in EDITS
    }
    used = {*FLAGGED_ON_WHITE, *FLAGGED_AS_IS, *FLAGGED_TEXTURE}
    others = [n for n in photos if n not in used]
    objects, whole, textures = [], [], []
    for name in others:
        photo = photos[name]
        for k in range(unrelated_per_source):
            if name in TEXTURES:
                textures.append(jpeg(region(photo, rng, 0.3), rng.randint(60, 95)))
            elif k % 3 == 0:
                whole.append(jpeg(photo if k % 2 else region(photo, rng), rng.randint(60, 95)))
            else:
                colour = rng.choice([(255, 255, 255), (255, 255, 255), (235, 235, 235), (0, 0, 0)])
                objects.append(jpeg(on_background(region(photo, rng, 0.3), rng, colour)))
    probes["unrelated: objects on plain backgrounds"] = objects
    probes["unrelated: photos and crops"] = whole
    probes["unrelated: textures"] = textures
    return World("real photos", [jpeg(im, 95) for im in flagged_images], probes)


def _synthetic_edit(image: Image.Image, kind: str, rng: random.Random) -> bytes:
    w, h = image.size
    if kind == "jpeg q40-90":
        return jpeg(image, rng.randint(40, 90))
    if kind == "resize 50-150%":
        return jpeg(resized(image, rng))
    if kind == "crop <=15%":
        return jpeg(cropped(image, rng, 0.15))
    if kind == "hflip":
        return jpeg(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    copy = image.copy()
    font = ImageFont.load_default(size=rng.randint(h // 14, h // 9))
    text = rng.choice(["SALE -50%", "NEW IN", "limited edition", "@shop.example", "£19.99"])
    position = (rng.randint(0, w // 3), rng.randint(0, h - h // 6))
    ImageDraw.Draw(copy).text(
        position, text, fill="white", font=font, stroke_width=2, stroke_fill="black"
    )
    return jpeg(copy)


def synthetic_world(rng: random.Random, flagged: int, unrelated: int, seed: int) -> World:
    """The demo catalog's world (as the benchmark measured it before the real photos)."""
    combos = all_products()
    originals = [render(rng.choice(combos), 70_000_000 + i, size=320) for i in range(flagged)]
    probes = {k: [_synthetic_edit(o, k, rng) for o in originals] for k in SYNTHETIC_EDITS}
    n_catalog = int(unrelated * 0.8)
    probes["unrelated: catalog photos"] = [
        jpeg(render(rng.choice(combos), 80_000_000 + i, size=320), 88) for i in range(n_catalog)
    ]
    probes["unrelated: other scenes"] = product_photos(
        unrelated - n_catalog, seed=seed + 5, size=(400, 300)
    )
    return World("synthetic", [jpeg(o, 95) for o in originals], probes)


def measure(
    world: World,
    encoder: Encoder,
    policy: ModerationSettings,
    then: Callable[[FlaggedSet], None] | None = None,
) -> None:
    """Add the flagged set, check every probe, print the table; ``then`` gets the set."""
    limits = ImageLimits()
    workdir = OUT / "moderation" / world.name.replace(" ", "-")
    shutil.rmtree(workdir, ignore_errors=True)
    index = EdgeIndex(workdir / "index")
    index.ensure_collection("flagged", encoder.identity)
    flagged = FlaggedSet(encoder, index, "flagged", policy, limits)
    t0 = time.perf_counter()
    for data in world.flagged:
        flagged.add_image(data, "prohibited", "bench")
    add_ms = (time.perf_counter() - t0) / len(world.flagged) * 1000
    verifiable = sum(e.verifiable for e in flagged.entries())
    rows, latencies = [], []
    totals = {"embedding": 0, "pixels": 0, "combined": 0, "n": 0}
    worst_recall, unrelated_fp, unrelated_n = 1.0, 0, 0
    for name, items in world.probes.items():
        counts = {"embedding": 0, "pixels": 0, "combined": 0}
        for data in items:
            t1 = time.perf_counter()
            verdict = flagged.check_bytes(data)
            latencies.append(time.perf_counter() - t1)
            signals = {m.signal for m in verdict.matches}
            counts["embedding"] += "embedding" in signals
            counts["pixels"] += bool(signals - {"embedding"})
            counts["combined"] += verdict.quarantined
        n = len(items)
        unrelated = name.startswith("unrelated")
        if unrelated:
            unrelated_fp += counts["combined"]
            unrelated_n += n
        else:
            worst_recall = min(worst_recall, counts["combined"] / n)
            for key in counts:
                totals[key] += counts[key]
            totals["n"] += n
        label = "false quarantines" if unrelated else "recall"
        rows.append([name, label, *(f"{counts[k] / n:.3f}" for k in counts), str(n)])
    n = totals["n"]
    rows.append(
        ["all near-duplicates", "recall", *(f"{totals[k] / n:.3f}" for k in counts), str(n)]
    )
    latencies.sort()
    print(
        f"\n## {world.name}: {len(world.flagged)} flagged images ({verifiable} verifiable by "
        f"keypoints; {add_ms:.0f} ms each to add), model {DEMO_MODEL.name}, image threshold "
        f"{policy.image_threshold}, keypoints {policy.keypoint_threshold} (floor "
        f"{policy.keypoint_floor}), layout {policy.layout_threshold} (floor "
        f"{policy.layout_floor}), pHash {policy.phash_strong}/{policy.phash_weak}\n"
    )
    print(
        table(
            rows,
            ["probe set", "figure", "embedding fired", "a pixel signal fired", "combined", "n"],
        )
    )
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(
        f"\nworst recall over edits {worst_recall:.3f}; false quarantines on all unrelated "
        f"{unrelated_fp}/{unrelated_n} = {unrelated_fp / max(unrelated_n, 1):.4f}; check "
        f"latency p50 {p50:.1f} ms, p99 {p99:.1f} ms (decode, embed, content, pixel signals)"
    )
    if then is not None:
        then(flagged)
    index.close()


def matching_speed(world: World, repeat: int = 3) -> None:
    """The dearest step of a check, keypoint matching, as it runs (faiss's exact binary
    scan) against OpenCV's brute-force matcher it replaced, on the flagged images' own
    descriptors, in the same run: a ratio that holds whatever the VM's speed that day."""
    found = []
    for data in world.flagged:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        trimmed = content(image)
        features = keypoint_features(trimmed) if trimmed is not None else None
        if features is not None:
            found.append(features.descriptors)
    pairs = [(a, b) for a in found for b in found]

    def opencv() -> None:
        for a, b in pairs:
            cv2.batchDistance(a, b, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2)

    def faiss_scan() -> None:
        for a, b in pairs:
            two_nearest(a, b)  # one thread, as a check runs it

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one thread each: a like-for-like comparison

    runs: dict[str, list[float]] = {"opencv": [], "faiss": []}
    for _ in range(repeat):  # interleaved, so drift in the VM's speed hits both alike
        for name, fn in (("opencv", opencv), ("faiss", faiss_scan)):
            t0 = time.perf_counter()
            fn()
            runs[name].append((time.perf_counter() - t0) / len(pairs) * 1000)
    cv2.setNumThreads(threads)
    cv_ms, fa_ms = min(runs["opencv"]), min(runs["faiss"])
    print(
        f"\nkeypoint matching, {len(pairs)} pairs of ~1,000 descriptors ({world.name}): "
        f"OpenCV brute force {cv_ms:.2f} ms a pair, faiss binary scan {fa_ms:.2f} ms "
        f"({cv_ms / fa_ms:.1f}x faster; identical nearest distances, tests/test_moderation.py)"
    )


# The vote index a check used before (OpenCV's LSH): the baseline of ``voting_speed``.
OPENCV_LSH: dict[str, bool | int | float | str] = {
    "algorithm": 6,
    "table_number": 8,
    "key_size": 20,
    "multi_probe_level": 0,
}


def voting_speed(world: World, queries: int = 200, repeat: int = 3) -> Callable[[FlaggedSet], None]:
    """Keypoint votes, a check's nearest-neighbour pass over every entry's descriptors, as
    it runs (faiss's binary inverted file) against OpenCV's LSH it replaced, on the same
    stored descriptors and the same probes' keypoints, in the same run: the time a probe
    takes and the share of the nearest descriptors within ``VOTE_DISTANCE`` each finds (an
    exact scan is 1). In a tight loop both stay in cache; within a check, the LSH's
    scattered buckets are evicted by the check's other work and cost ~2.5x more."""

    def run(flagged: FlaggedSet) -> None:
        snap = flagged.snapshot()
        views = [_voting_views(flagged._parts[e.id]) for e in snap.entries]
        codes, _ = vote_codes(views)
        rng = random.Random(0)
        every = [d for items in world.probes.values() for d in items]
        probes = rng.sample(every, min(queries, len(every)))
        asked = []
        for data in probes:
            mine = Pixels.of(Image.open(io.BytesIO(data)).convert("RGB")).features
            if mine is not None:
                step = max(1, len(mine) // VOTERS)
                asked.append(np.ascontiguousarray(mine.descriptors[::step]))
        t0 = time.perf_counter()
        lsh = cv2.FlannBasedMatcher(OPENCV_LSH, {"checks": 32})
        lsh.add([codes])
        lsh.train()
        t1 = time.perf_counter()
        ivf, _ = _vote_index(views)  # built as a check builds it after the set changes
        built = {"opencv": t1 - t0, "faiss": time.perf_counter() - t1}
        exact = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        exact.add(codes)

        def opencv() -> list[np.ndarray]:
            return [
                np.array([m[0].distance if m else 256 for m in lsh.knnMatch(q, k=1)]) for q in asked
            ]

        def inverted_file() -> list[np.ndarray]:
            return [ivf.search(q, 1)[0][:, 0] for q in asked]

        faiss.omp_set_num_threads(1)
        truth = [exact.search(q, 1)[0][:, 0] for q in asked]
        near = np.concatenate([t <= VOTE_DISTANCE for t in truth])  # what an exact scan finds
        runs: dict[str, list[float]] = {"opencv": [], "faiss": []}
        share: dict[str, float] = {}
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        for _ in range(repeat):
            for name, fn in (("opencv", opencv), ("faiss", inverted_file)):
                t0 = time.perf_counter()
                nearest = fn()
                runs[name].append((time.perf_counter() - t0) / len(asked) * 1000)
                hit = np.concatenate([d <= VOTE_DISTANCE for d in nearest])
                share[name] = float(hit[near].mean())
        cv2.setNumThreads(threads)
        cv_ms, fa_ms = min(runs["opencv"]), min(runs["faiss"])
        print(
            f"\nkeypoint votes, {len(asked)} probes' keypoints against {len(codes):,} stored "
            f"descriptors ({world.name}): OpenCV LSH {cv_ms:.2f} ms a probe, finding "
            f"{share['opencv']:.3f} of the nearest within {VOTE_DISTANCE} bits (built in "
            f"{built['opencv']:.2f} s); faiss inverted file {fa_ms:.2f} ms "
            f"({cv_ms / fa_ms:.1f}x faster), finding {share['faiss']:.3f} (built in "
            f"{built['faiss']:.2f} s)"
        )

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", choices=["real", "synthetic", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=3, help="edits per flagged image (real)")
    parser.add_argument("--unrelated-per-source", type=int, default=80)
    parser.add_argument("--flagged", type=int, default=100, help="synthetic flagged images")
    parser.add_argument("--unrelated", type=int, default=1000, help="synthetic unrelated")
    parser.add_argument(
        "--image-threshold",
        type=float,
        default=0.995,
        help="cosine threshold for image entries; the demo model puts any two photos of its "
        "small synthetic world close together, so it needs a stricter one than real CLIP",
    )
    args = parser.parse_args(argv)
    policy = ModerationSettings(image_threshold=args.image_threshold)
    encoder = Encoder(str(DEMO_MODEL), batch_size=64)
    if args.world in ("real", "both"):
        world = real_world(random.Random(args.seed), args.draws, args.unrelated_per_source)
        measure(world, encoder, policy)
        matching_speed(world)
    if args.world in ("synthetic", "both"):
        rng = random.Random(args.seed)
        world = synthetic_world(rng, args.flagged, args.unrelated, args.seed)
        measure(world, encoder, policy, then=voting_speed(world))
    return 0


if __name__ == "__main__":
    sys.exit(main())
