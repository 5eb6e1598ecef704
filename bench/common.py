"""Helpers shared by benchmarks: models built locally (no download) and synthetic images."""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "out"


def build_model(kind: str) -> Path:
    """A CLIP-architecture model with random weights: ``tiny`` (tests) or ``vitb32`` (real cost)."""
    from demo.tiny_model import build_tiny_clip

    path = OUT / "models" / kind
    if (path / "config.json").exists():
        return path
    if kind == "tiny":
        return build_tiny_clip(path)
    if kind == "tiny512":
        # Cheap towers, but 512-d vectors like ViT-B/32: index cost at production dimension.
        return build_tiny_clip(path, projection_dim=512)
    if kind == "vitb32":
        # ViT-B/32's vision tower (768 wide, 12 layers, 32px patches, 224px input, 512-d
        # projection): the same compute as sentence-transformers/clip-ViT-B-32.
        return build_tiny_clip(
            path,
            projection_dim=512,
            image_size=224,
            patch_size=32,
            vision_hidden=768,
            vision_layers=12,
            vision_heads=12,
            vision_intermediate=3072,
            text_hidden=512,
            text_layers=12,
            text_heads=8,
        )
    raise ValueError(f"unknown model kind {kind!r}")


def product_photos(n: int, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """JPEG photos of coloured shapes on textured backgrounds, like catalog uploads."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = rng.integers(150, 255, 3)
        noise = rng.normal(0, 12, (size[1], size[0], 3))
        arr = np.clip(base + noise, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
            x1 = x0 + int(rng.integers(80, size[0] // 2))
            y1 = y0 + int(rng.integers(80, size[1] // 2))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def clustered_vectors(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around cluster centres with varied spread, like real embeddings.

    Uniform random vectors are HNSW's worst case and nothing like CLIP embeddings, which
    concentrate around concepts (see NOTES: recall 0.12 on uniform data).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, n)
    spread = rng.uniform(0.6, 1.2, clusters)[labels][:, None]
    vectors = centres[labels] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of the values."""
    return float(np.percentile(np.asarray(values), q))


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs, in seconds."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def gate_line(encoder: Any) -> str:
    """The export gate's figures for an encoder's runtime (what made it usable)."""
    report = encoder.gate
    if report is None:
        return f"{encoder.runtime_active.value}: no gate (torch is the reference)"
    if report.top10_overlap is None:
        text = f", text {report.text_cosine:.7f}" if report.text_cosine is not None else ""
        return (
            f"{report.runtime}: min cosine to torch over the probes, image "
            f"{report.image_cosine:.7f}{text} (needs >= 0.999): passed {report.passed}"
        )
    return (
        f"{report.runtime}: min cosine to fp32 {report.image_cosine:.4f} (needs >= 0.98), "
        f"top-10 overlap with fp32 {report.top10_overlap:.3f} (needs >= 0.95): "
        f"passed {report.passed}"
    )


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain aligned text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, sep, *body])
