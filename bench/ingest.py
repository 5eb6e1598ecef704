"""Ingest throughput: the worker pipeline against the model's own batched limit.

For each model (built here with random weights: the tiny test model and a full
ViT-B/32-architecture CLIP, the production default's compute), on the same JPEG photos:

- ``encode (batched)``: ``SentenceTransformer.encode`` over pre-decoded images, batch 32:
  the model's own limit, no decoding, no storage.
- ``naive loop``: what a one-off script does: decode, encode one image, upsert one point.
- ``worker pipeline``: image.uploaded events -> decode -> embed in batches -> upsert
  (``Pipeline.ingest_events``, the code the Celery workers run, fed by the in-process queue).

Run: ``.venv/bin/python -m bench.ingest [--images N] [--models tiny,vitb32]``
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import uuid

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

from bench.common import OUT, build_model, product_photos, table, timed
from services.auth.principal import operator
from services.encoder import Encoder
from services.index.base import PointData
from services.index.edge import EdgeIndex
from services.jobs.store import State
from services.runtime import Runtime, build_runtime
from services.settings import Settings

BATCH = 32


def bench_model(kind: str, photos: list[bytes], repeat: int) -> list[list[str]]:
    path = build_model(kind)
    encoder = Encoder(str(path), batch_size=BATCH)
    encoder.load()
    model = encoder._model
    decoded = [Image.open(io.BytesIO(p)).convert("RGB") for p in photos]
    warmup = product_photos(BATCH, seed=99)
    model.encode([Image.open(io.BytesIO(p)).convert("RGB") for p in warmup], batch_size=BATCH)

    def plain() -> None:
        model.encode(decoded, batch_size=BATCH, normalize_embeddings=True)

    work = OUT / "work" / kind
    shutil.rmtree(work, ignore_errors=True)

    def naive() -> None:
        index = EdgeIndex(work / "naive" / uuid.uuid4().hex)
        index.ensure_collection("images", encoder.identity)
        for data in photos:
            img = Image.open(io.BytesIO(data)).convert("RGB")
            vec = model.encode([img], normalize_embeddings=True)[0]
            index.upsert("images", [PointData(str(uuid.uuid4()), np.asarray(vec), {})])
        index.close()

    def pipeline() -> None:
        settings = Settings(
            data_dir=work / "pipe" / uuid.uuid4().hex, model=str(path), batch_size=BATCH
        )
        settings.queue.batch_max_wait_s = 0.05
        runtime = build_runtime(settings, encoder=encoder)
        runtime.open()
        # Warm the worker thread up as the model was warmed up for plain encode (torch's
        # per-thread pools), on other images so the timed run skips nothing.
        _run_job(runtime, [runtime.store.put(p) for p in warmup])
        ids = [runtime.store.put(p) for p in photos]  # uploaded: bytes stored, events next
        runs["pipeline"].append(timed(lambda: _run_job(runtime, ids)))
        runtime.close()

    # Interleave the two fast methods so drift in machine load hits both alike.
    runs: dict[str, list[float]] = {"plain": [], "pipeline": []}
    for _ in range(repeat):
        runs["plain"].append(timed(plain))
        pipeline()
    timing = {key: statistics.median(values) for key, values in runs.items()}
    timing["naive"] = timed(naive)
    n = len(photos)
    base = n / timing["plain"]
    rows = []
    for label, key in (
        ("encode (batched)", "plain"),
        ("naive loop", "naive"),
        ("worker pipeline", "pipeline"),
    ):
        rate = n / timing[key]
        rows.append(
            [kind, label, f"{n}", f"{timing[key]:.2f}", f"{rate:.1f}", f"{rate / base:.2f}x"]
        )
    rows.append(
        [kind, "pipeline / naive", "", "", "", f"{timing['naive'] / timing['pipeline']:.2f}x"]
    )
    return rows


def _run_job(runtime: Runtime, ids: list[str]) -> None:
    job_id = runtime.uploads.ingest_stored(operator("bench"), ids)
    assert runtime.wait_idle(timeout_s=3600)
    job = runtime.jobs.store.get(job_id)
    assert job.state is State.DONE and job.counts["done"] == len(ids), job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="tiny,vitb32")
    parser.add_argument("--images", type=int, default=0, help="default: 512 tiny, 96 vitb32")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: all cores)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs (median)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = []
    for kind in args.models.split(","):
        n = args.images or (512 if kind == "tiny" else 96)
        rows.extend(bench_model(kind, product_photos(n, seed=1), args.repeat))
        print(f"done: {kind}", file=sys.stderr)
    print(
        f"ingest throughput, {os.cpu_count()} CPU cores, JPEG 640x480, model batch {BATCH}, "
        f"median of {args.repeat} interleaved runs (naive: 1 run)"
    )
    print(table(rows, ["model", "method", "images", "seconds", "images/s", "vs batched encode"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
