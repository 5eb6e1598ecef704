"""Query latency through the HTTP layer against a brute-force numpy scan, with recall@10.

For 10k and 100k synthetic 512-d vectors (clustered like real embeddings) in the embedded
Qdrant index (HNSW built), it serves the real Flask app on loopback and times, per query:

- ``text search (HTTP)``: GET /api/v1/search: text encoding + HNSW search + JSON, over HTTP.
- ``similar (HTTP)``: GET /api/v1/images/<id>/similar.
- ``brute force (numpy)``: the same query vectors scanned exactly in-process (no HTTP).

It prints p50/p99 latencies, the ratios, and recall@10 of the index's answers against the
exact scan. By default the text tower is a tiny one (512-d output), so the numbers show the
index and HTTP cost; ``--model vitb32`` serves ViT-B/32's full text tower (random weights)
under ``--runtime`` (torch, onnx, onnx-int8). Text searches run with the query cache off
(every query is encoded), then once more through it (``repeated query``: a cache hit).

A first table times one text query's encode under each runtime on the chosen model,
against torch in the same run (``--runtimes``; ``--sizes ''`` prints only that table).

``--quantization int8`` creates the collection with Qdrant scalar int8 quantization
(rescored from the originals), ``--on-disk`` keeps the originals in mapped files; for each
size it prints the build time and what the reopened index adds to the process's RSS,
against the vectors' float32 size (the 1M run: ``--sizes 1000000 --quantization int8
--on-disk``; a bench run, not CI: the HNSW build takes most of an hour on 2 cores).

Run: ``.venv/bin/python -m bench.query [--sizes 10000,100000] [--queries 200]
[--model tiny512|vitb32] [--runtime onnx-int8] [--runtimes torch,onnx,onnx-int8]
[--quantization int8] [--on-disk]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import numpy as np
from werkzeug.serving import WSGIRequestHandler, make_server

from bench.common import OUT, build_model, gate_line, percentile, table
from services.auth.apikeys import SqliteKeyStore
from services.auth.principal import Scope, operator
from services.encoder import Encoder, ModelIdentity
from services.ids import point_id
from services.index.base import PointData, VectorStorage
from services.index.edge import EdgeIndex
from services.runtime import build_runtime
from services.search.query_cache import QueryVectors
from services.settings import Settings
from web import create_app

COLOURS = ["red", "blue", "green", "black", "white", "yellow", "pink", "grey"]
PATTERNS = ["plain", "striped", "dotted", "checked", "floral"]
ITEMS = ["dress", "shirt", "shoe", "bag", "hat", "jacket", "skirt", "trousers", "scarf", "coat"]


def concept_clusters(encoder: Encoder, n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Image-like vectors clustered around concepts, placed the way CLIP places them.

    Each concept ("red striped dress") has a cluster of image vectors whose centre is the
    concept's text embedding pushed along one shared offset (CLIP's modality gap), so a
    text query lands near its cluster but not inside it, and clusters have varied spread.
    Random text vectors against random clusters would be a harder, unrealistic case.
    """
    rng = np.random.default_rng(seed)
    concepts = [f"a photo of a {c} {p} {i}" for c in COLOURS for p in PATTERNS for i in ITEMS]
    text = encoder.encode_texts(concepts).astype(np.float64)
    dim = text.shape[1]
    # Text embeddings share a large common direction (as CLIP's do); what tells concepts
    # apart is the residual, so clusters are placed along it, plus the shared gap offset.
    common = text.mean(axis=0)
    residual = text - common
    residual /= np.linalg.norm(residual, axis=1, keepdims=True)
    gap = np.asarray(rng.normal(size=(dim,)))
    gap = gap / np.linalg.norm(gap)
    centres = (
        0.7 * residual
        + 0.4 * common / np.linalg.norm(common)
        + 0.6 * gap
        + 0.3 * rng.normal(size=text.shape) / np.sqrt(dim)
    )
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, len(concepts), n)
    spread = rng.uniform(0.5, 1.0, len(concepts))[labels][:, None]
    vectors = centres[labels] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), concepts


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


def _exact(matrix: np.ndarray, q: np.ndarray, k: int, exclude: int | None = None) -> list[int]:
    scores = matrix @ q
    if exclude is not None:
        scores[exclude] = -np.inf
    top = np.argpartition(-scores, k)[:k]
    return [int(i) for i in top[np.argsort(-scores[top])]]


def bench_text_encode(model_dir: str, runtimes: list[str], queries: int) -> list[list[str]]:
    """One text query's encode (no cache) under each runtime, interleaved."""
    encoders = {}
    for name in runtimes:
        encoder = Encoder(model_dir, runtime=name, onnx_cache=OUT / "onnx")
        encoder.load()
        if encoder.runtime_active.value != name:
            raise SystemExit(f"{name}: {encoder.runtime_note}")
        encoder.encode_texts(["warm up"])
        encoders[name] = encoder
    rng = np.random.default_rng(7)
    words = [*COLOURS, *PATTERNS, *ITEMS]
    texts = [" ".join(rng.choice(words, int(rng.integers(2, 6)))) for _ in range(queries)]
    lat: dict[str, list[float]] = {name: [] for name in encoders}
    # Blocks of queries per runtime, the blocks interleaved: drift in machine load hits
    # every runtime alike, and onnxruntime's pool threads (which spin a moment after each
    # run) do not steal the next runtime's cores.
    block = max(1, len(texts) // 5)
    for start in range(0, len(texts), block):
        for name, encoder in encoders.items():
            encoder.encode_texts(["settle"])
            for text in texts[start : start + block]:
                t0 = time.perf_counter()
                encoder.encode_texts([text])
                lat[name].append(time.perf_counter() - t0)
    base = percentile(lat[runtimes[0]], 50)
    return [
        [
            name,
            f"{percentile(lat[name], 50) * 1e3:.2f}",
            f"{percentile(lat[name], 99) * 1e3:.2f}",
            f"{percentile(lat[name], 50) / base:.2f}x",
            gate_line(encoders[name]),
        ]
        for name in encoders
    ]


def _rss_mb() -> dict[str, float]:
    """This process's resident memory by kind (Linux): anonymous (heap) and file-backed
    (memory-mapped files, reclaimable)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


def _index_memory(
    path: Path, ef: int, storage: VectorStorage, identity: ModelIdentity, probes: np.ndarray
) -> tuple[EdgeIndex, dict[str, float]]:
    """Reopen the built index and search with it, measuring what it added to RSS."""
    before = _rss_mb()
    index = EdgeIndex(path, hnsw_ef=ef, storage=storage)
    index.ensure_collection("images", identity)
    for q in probes:
        index.search("images", q, 10)
    after = _rss_mb()
    return index, {k: after[k] - before[k] for k in after}


def _built(path: Path, n: int, ef: int, storage: VectorStorage, identity: ModelIdentity) -> bool:
    """An index of n points from an earlier run is there (vectors are deterministic)."""
    if not path.exists():
        return False
    index = EdgeIndex(path, hnsw_ef=ef, storage=storage)
    try:
        return "images" in index.list_collections() and index.count("images") == n
    finally:
        index.close()


def bench_size(
    n: int,
    queries: int,
    encoder: Encoder,
    model_dir: str,
    ef: int,
    storage: VectorStorage,
    notes: list[str],
    text_ef: int | None = None,
    reuse: bool = False,
) -> list[list[str]]:
    work = OUT / "query" / str(n)
    settings = Settings(data_dir=work, model=model_dir, query_cache_size=0)
    reuse = reuse and _built(settings.index_path, n, ef, storage, encoder.identity)
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)
    settings.index.hnsw_ef = ef
    settings.index.text_hnsw_ef = text_ef
    settings.web.rate_limit = "1000000/minute"
    vectors, concepts = concept_clusters(encoder, n, seed=n)
    image_ids = [hashlib.sha256(f"img-{i}".encode()).hexdigest() for i in range(n)]
    index = EdgeIndex(settings.index_path, hnsw_ef=ef, storage=storage)
    index.ensure_collection("images", encoder.identity)
    t0 = time.perf_counter()
    for start in range(0, 0 if reuse else n, 2000):
        index.upsert(
            "images",
            [
                PointData(
                    point_id(image_ids[i]),
                    vectors[i],
                    {"image_id": image_ids[i], "product_id": f"p{i // 4}"},
                )
                for i in range(start, min(n, start + 2000))
            ],
        )
    upsert_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not reuse:
        index.optimize("images")
    build_s = time.perf_counter() - t0
    if reuse:
        notes.append(f"{n}: index reused from an earlier run (--reuse-index): no build timed")
    print(f"{n}: upsert {upsert_s:.1f}s, HNSW build {build_s:.1f}s", file=sys.stderr)
    index.close()
    probes = vectors[np.random.default_rng(2).integers(0, n, 200)]
    index, grown = _index_memory(settings.index_path, ef, storage, encoder.identity, probes)
    float32_mb = n * vectors.shape[1] * 4 / 2**20
    segments = settings.index_path / "images" / "shard" / "segments"

    def size_mb(pattern: str) -> float:
        return sum(f.stat().st_size for f in segments.glob(pattern)) / 2**20

    quantized, links = size_mb("*/vector_storage/quantized*"), size_mb("*/vector_index/*")
    originals = size_mb("*/vector_storage/matrix.dat") + size_mb("*/vector_storage/vectors/*")
    resident = (quantized if quantized else originals) + links
    notes.append(
        f"{n}: files: original vectors {originals:.0f} MB ("
        + ("on disk, read only to rescore" if storage.on_disk else "held in RAM")
        + f"), int8 copy {quantized:.0f} MB, HNSW links {links:.0f} MB; vector RAM "
        f"(what searches keep resident: the int8 copy or the originals, and the links) "
        f"{resident:.0f} MB = {resident / float32_mb:.0%} of float32"
    )
    notes.append(
        f"{n}: upsert {upsert_s:.0f} s, HNSW build {build_s:.0f} s; the reopened index after "
        f"200 searches added {grown['RssAnon']:.0f} MB anonymous RSS "
        f"({grown['RssAnon'] / float32_mb:.0%} of the {float32_mb:.0f} MB the vectors take as "
        f"float32; {grown['RssAnon'] / n * 1e6:.0f} MB per million) and "
        f"{grown['RssFile']:.0f} MB of mapped files"
    )

    runtime = build_runtime(
        settings, encoder=encoder, index=index, keys=SqliteKeyStore(work / "keys.db")
    )
    app = create_app(settings, runtime=runtime)  # opens it: the payload indexes a deployment has
    token = runtime.access.create_key(operator("bench"), "bench", [Scope.SEARCH])[1]
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/api/v1"
    rng = np.random.default_rng(1)
    texts = [concepts[int(i)] for i in rng.integers(0, len(concepts), queries)]
    sims = [int(i) for i in rng.integers(0, n, queries)]
    lat: dict[str, list[float]] = {"text": [], "similar": [], "brute": [], "cached": []}
    recalls: dict[str, list[float]] = {"text": [], "similar": []}
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        for q in texts[:10]:  # warm-up
            http.get(f"{base}/search", params={"q": q, "k": 10})
        # Timed requests first, exact scans after: numpy's BLAS threads (which spin a
        # moment after each call) would otherwise take cores from the next request.
        answers: list[set[str]] = []
        for q in texts:
            t0 = time.perf_counter()
            r = http.get(f"{base}/search", params={"q": q, "k": 10})
            lat["text"].append(time.perf_counter() - t0)
            answers.append({h["image_id"] for h in r.json()["results"]})
        runtime.search.queries = QueryVectors(encoder, len(texts))
        for q in texts:  # fill the cache, then time hits
            http.get(f"{base}/search", params={"q": q, "k": 10})
        for q in texts:
            t0 = time.perf_counter()
            http.get(f"{base}/search", params={"q": q, "k": 10})
            lat["cached"].append(time.perf_counter() - t0)
        similar: list[set[str]] = []
        for i in sims:
            t0 = time.perf_counter()
            r = http.get(f"{base}/images/{image_ids[i]}/similar", params={"k": 10})
            lat["similar"].append(time.perf_counter() - t0)
            similar.append({h["image_id"] for h in r.json()["results"]})
    for q, got in zip(texts, answers, strict=True):
        qv = encoder.encode_texts([q])[0]
        t0 = time.perf_counter()
        exact = _exact(vectors, qv, 10)
        lat["brute"].append(time.perf_counter() - t0)
        recalls["text"].append(len(got & {image_ids[i] for i in exact}) / 10)
    for i, got in zip(sims, similar, strict=True):
        exact = _exact(vectors, vectors[i], 10, exclude=i)
        recalls["similar"].append(len(got & {image_ids[j] for j in exact}) / 10)
    server.shutdown()
    runtime.close()

    brute50, brute99 = percentile(lat["brute"], 50) * 1e3, percentile(lat["brute"], 99) * 1e3
    rows = [[f"{n}", "brute force (numpy)", f"{brute50:.2f}", f"{brute99:.2f}", "1.00x", "1.000"]]
    for key, label in (
        ("text", "text search (HTTP)"),
        ("cached", "text search, repeated query (HTTP)"),
        ("similar", "similar (HTTP)"),
    ):
        p50, p99 = percentile(lat[key], 50) * 1e3, percentile(lat[key], 99) * 1e3
        recall = np.mean(recalls["text" if key == "cached" else key])
        rows.append(
            [f"{n}", label, f"{p50:.2f}", f"{p99:.2f}", f"{p50 / brute50:.2f}x", f"{recall:.3f}"]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", type=int, default=512, help="HNSW ef at search time")
    parser.add_argument("--model", choices=["tiny512", "vitb32"], default="tiny512")
    parser.add_argument("--quantization", choices=["none", "int8"], default="none")
    parser.add_argument("--on-disk", action="store_true", help="original vectors on disk")
    parser.add_argument("--oversampling", type=float, default=2.0)
    parser.add_argument("--text-ef", type=int, default=None, help="HNSW ef for text queries")
    parser.add_argument(
        "--reuse-index", action="store_true", help="keep an index of the same size built before"
    )
    parser.add_argument("--runtime", default="torch", help="runtime serving the HTTP queries")
    parser.add_argument("--runtimes", default="torch,onnx,onnx-int8", help="text encode table")
    args = parser.parse_args(argv)
    model_dir = str(build_model(args.model))
    encode_rows = bench_text_encode(model_dir, args.runtimes.split(","), args.queries)
    print(f"text query encode, {os.cpu_count()} CPU cores, model {args.model}, one query a call")
    print(
        table(
            encode_rows,
            ["runtime", "p50 ms", "p99 ms", "p50 vs " + args.runtimes.split(",")[0], "export gate"],
        )
    )
    if not args.sizes:
        return 0
    encoder = Encoder(model_dir, runtime=args.runtime, onnx_cache=OUT / "onnx")
    encoder.load()
    rows: list[list[str]] = []
    notes: list[str] = []
    storage = VectorStorage(args.quantization, args.on_disk, args.oversampling)
    for n in (int(x) for x in args.sizes.split(",")):
        rows.extend(
            bench_size(
                n,
                args.queries,
                encoder,
                model_dir,
                args.ef,
                storage,
                notes,
                args.text_ef,
                args.reuse_index,
            )
        )
    print(
        f"\nquery latency, {os.cpu_count()} CPU cores, model {args.model} text tower on "
        f"{encoder.runtime_active.value}, 512-d, k=10, hnsw_ef={args.ef} (text "
        f"{args.text_ef or args.ef}), {args.queries} "
        f"queries each; vectors: {args.quantization} quantization"
        + (f" (oversampling {args.oversampling})" if args.quantization != "none" else "")
        + (", originals on disk" if args.on_disk else ", in RAM")
    )
    print(table(rows, ["vectors", "method", "p50 ms", "p99 ms", "p50 vs brute", "recall@10"]))
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
