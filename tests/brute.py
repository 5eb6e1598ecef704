"""Independent reference computations: rankings by exhaustive numpy scans."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def top_k(
    query: np.ndarray,
    ids: Sequence[str],
    vectors: np.ndarray,
    k: int,
    keep: Callable[[int], bool] = lambda i: True,
) -> list[tuple[str, float]]:
    """Exact cosine top-k over the rows passing ``keep``."""
    scores = unit(vectors) @ unit(query[None, :])[0]
    order = [i for i in np.argsort(-scores, kind="stable") if keep(int(i))]
    return [(ids[i], float(scores[i])) for i in order[:k]]


def top_k_grouped(
    query: np.ndarray,
    ids: Sequence[str],
    vectors: np.ndarray,
    groups: Sequence[Any],
    k: int,
) -> list[tuple[str, float]]:
    """Exact best hit per group, groups ranked by their best score."""
    scores = unit(vectors) @ unit(query[None, :])[0]
    seen: set[Any] = set()
    out: list[tuple[str, float]] = []
    for i in np.argsort(-scores, kind="stable"):
        g = groups[i]
        if g is None or g in seen:
            continue
        seen.add(g)
        out.append((ids[i], float(scores[i])))
        if len(out) == k:
            break
    return out


def recommend_sum(
    positives: np.ndarray,
    negatives: np.ndarray,
    ids: Sequence[str],
    vectors: np.ndarray,
    k: int,
    exclude: set[str],
) -> list[tuple[str, float]]:
    """Qdrant's sum_scores strategy: sum of cosine to positives minus sum to negatives."""
    v = unit(vectors)
    scores = (v @ unit(positives).T).sum(axis=1)
    if len(negatives):
        scores -= (v @ unit(negatives).T).sum(axis=1)
    order = [i for i in np.argsort(-scores, kind="stable") if ids[i] not in exclude]
    return [(ids[i], float(scores[i])) for i in order[:k]]


def clustered(n: int, dim: int, clusters: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around random centres, like real embeddings (not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(clusters, dim)))
    labels = rng.integers(0, clusters, n)
    return unit(centres[labels] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)).astype(
        np.float32
    )
