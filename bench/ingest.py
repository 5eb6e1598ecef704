"""Ingest throughput: the worker pipeline against the model's own batched limit.

For each model (built here with random weights: the tiny test model and a full
ViT-B/32-architecture CLIP, the production default's compute), on the same JPEG photos:

- ``encode (batched)``: ``SentenceTransformer.encode`` over pre-decoded images, batch 32:
  the model's own limit, no decoding, no storage.
- ``naive loop``: what a one-off script does: decode, encode one image, upsert one point.
- ``worker pipeline``: image.uploaded events -> decode -> embed in batches -> upsert
  (``Pipeline.ingest_events``, the code the Celery workers run, fed by the in-process queue,
  on the model set up as ``sightline worker`` sets it up: onnxruntime's threads not spinning).
  It reads the JPEG bytes itself and decodes them at the smallest DCT scale that covers
  the model's input, where the batched encode is handed full-size decoded images; its
  decode thread runs the model's processor and the thumbnails beside the model.

- ``end to end`` (with ``--decode-workers N``): JPEG bytes decoded in N worker processes
  (at the smallest DCT scale covering the model's input) while the model embeds the
  batches already decoded: what keeps an accelerator fed, where one process's decoding
  would leave it waiting.

Each under every inference runtime asked for (``--runtimes``, ``SIGHTLINE_RUNTIME``: torch,
onnx, onnx-int8); ratios are against torch's batched encode measured in the same run, and
the pipeline's also against its own runtime's batched encode. ``--device cuda`` runs the
models on a GPU (torch; onnxruntime's CUDA provider where installed), ``--precision fp16``
runs torch under float16 autocast there.

Run: ``.venv/bin/python -m bench.ingest [--images N] [--models tiny,vitb32] [--runtimes ...]
[--device cuda --precision fp16 --decode-workers 8]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from PIL import Image

from bench.common import OUT, build_model, gate_line, product_photos, table, timed
from services.auth.principal import operator
from services.encoder import Encoder
from services.index.base import PointData
from services.index.edge import EdgeIndex
from services.jobs.store import State
from services.runtime import Runtime, build_runtime
from services.settings import Settings

BATCH = 32


def _decode(data: bytes, side: int) -> Image.Image:
    """One JPEG decoded at the smallest DCT scale that still covers ``side`` px."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (side, side))
    return image.convert("RGB")


@contextlib.contextmanager
def _precision(device: str, precision: str) -> Iterator[None]:
    """float16 autocast on a GPU for torch; nothing otherwise."""
    if precision == "fp16":
        import torch

        with torch.autocast(device_type=device.split(":")[0], dtype=torch.float16):
            yield
    else:
        yield


def end_to_end(
    encoder: Encoder, photos: list[bytes], pool: ProcessPoolExecutor, precision: str
) -> None:
    """Decode in the pool, in order, while the model embeds full batches."""
    side = encoder.input_size or 224
    batch: list[Image.Image] = []
    with _precision(encoder.device, precision):
        for image in pool.map(_decode, photos, [side] * len(photos), chunksize=4):
            batch.append(image)
            if len(batch) == BATCH:
                encoder.encode_images(batch)
                batch = []
        if batch:
            encoder.encode_images(batch)


def bench_model(
    kind: str,
    photos: list[bytes],
    repeat: int,
    runtimes: list[str],
    threads: int | None,
    device: str = "cpu",
    precision: str = "fp32",
    decode_workers: int = 0,
) -> tuple[list[list[str]], list[str]]:
    """Rows for one model: per runtime, its batched encode and the worker pipeline on it
    (and, for torch, the naive loop); ratios against torch's batched encode and, for the
    pipeline, against its own runtime's; and each runtime's export-gate figures."""
    path = build_model(kind)
    decoded = [Image.open(io.BytesIO(p)).convert("RGB") for p in photos]
    warmup = product_photos(BATCH, seed=99)
    warm = [Image.open(io.BytesIO(p)).convert("RGB") for p in warmup]
    encoders: dict[str, Encoder] = {}
    workers: dict[str, Encoder] = {}
    for name in runtimes:
        # The batched encode with the model set up for queries (onnxruntime's threads
        # spinning), the pipeline with the model as `sightline worker` sets it up.
        for spin, into in ((True, encoders), (Settings().for_worker().spin, workers)):
            if name == "torch" and into is workers:  # spinning is onnxruntime's alone
                workers[name] = encoders[name]
                continue
            encoder = Encoder(
                str(path),
                device=device,
                batch_size=BATCH,
                runtime=name,
                onnx_cache=OUT / "onnx",
                threads=threads,
                spin=bool(spin),
            )
            encoder.load()  # exports and gates the ONNX towers on the first run
            if encoder.runtime_active.value != name:
                raise SystemExit(f"{name}: {encoder.runtime_note}")
            encoder.encode_images(warm)
            into[name] = encoder
    work = OUT / "work" / kind
    shutil.rmtree(work, ignore_errors=True)
    torch_encoder = encoders.get("torch") or next(iter(encoders.values()))

    def naive() -> None:
        index = EdgeIndex(work / "naive" / uuid.uuid4().hex)
        index.ensure_collection("images", torch_encoder.identity)
        for data in photos:
            img = Image.open(io.BytesIO(data)).convert("RGB")
            vec = torch_encoder.encode_images([img])[0]
            index.upsert("images", [PointData(str(uuid.uuid4()), np.asarray(vec), {})])
        index.close()

    def pipeline(encoder: Encoder) -> float:
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
        took = timed(lambda: _run_job(runtime, ids))
        runtime.close()
        return took

    def plain(encoder: Encoder) -> float:
        with _precision(device, precision if encoder.runtime_active.value == "torch" else "fp32"):
            return timed(lambda: encoder.encode_images(decoded))

    pool = ProcessPoolExecutor(decode_workers) if decode_workers else None
    if pool is not None:  # start the workers before anything is timed
        list(pool.map(_decode, photos[:decode_workers], [64] * decode_workers))
    # Interleave every method so drift in machine load hits all alike.
    runs: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeat):
        for name, encoder in encoders.items():
            runs.setdefault((name, "plain"), []).append(plain(encoder))
            runs.setdefault((name, "pipeline"), []).append(pipeline(workers[name]))
            if pool is not None:
                mode = precision if name == "torch" else "fp32"
                runs.setdefault((name, "end"), []).append(
                    timed(lambda e=encoder, m=mode: end_to_end(e, photos, pool, m))  # type: ignore[misc]
                )
    if pool is not None:
        pool.shutdown()
    timing = {key: statistics.median(values) for key, values in runs.items()}
    if "torch" in encoders:
        timing[("torch", "naive")] = timed(naive)
    n = len(photos)
    base = n / timing.get(("torch", "plain"), timing[(runtimes[0], "plain")])
    rows = []
    for name in encoders:
        own = n / timing[(name, "plain")]
        for label, key in (
            ("encode (batched)", "plain"),
            ("naive loop", "naive"),
            ("worker pipeline", "pipeline"),
            (f"end to end, {decode_workers} decode workers", "end"),
        ):
            if (name, key) not in timing:
                continue
            rate = n / timing[(name, key)]
            rows.append(
                [
                    kind,
                    name,
                    label,
                    f"{n}",
                    f"{timing[(name, key)]:.2f}",
                    f"{rate:.1f}",
                    f"{rate / base:.2f}x",
                    f"{rate / own:.2f}x",
                ]
            )
    return rows, [f"{kind} {gate_line(e)}" for e in encoders.values()]


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
        "--threads", type=int, default=None, help="inference threads (default: all cores)"
    )
    parser.add_argument(
        "--runtimes",
        default="torch,onnx,onnx-int8",
        help="SIGHTLINE_RUNTIME values to compare (torch is the baseline)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs (median)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--precision", choices=["fp32", "fp16"], default="fp32", help="torch's (fp16: GPU only)"
    )
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=0,
        help="also time end to end: JPEG decode in this many processes beside the model",
    )
    args = parser.parse_args(argv)
    if args.precision == "fp16" and not args.device.startswith("cuda"):
        parser.error("--precision fp16 needs --device cuda (CPUs run float16 slower than fp32)")
    rows, gates = [], []
    runtimes = args.runtimes.split(",")
    for kind in args.models.split(","):
        n = args.images or (512 if kind == "tiny" else 96)
        found, gate = bench_model(
            kind,
            product_photos(n, seed=1),
            args.repeat,
            runtimes,
            args.threads,
            args.device,
            args.precision,
            args.decode_workers,
        )
        rows.extend(found)
        gates.extend(gate)
        print(f"done: {kind}", file=sys.stderr)
    print(
        f"ingest throughput, {os.cpu_count()} CPU cores, device {args.device} "
        f"({args.precision} for torch), JPEG 640x480, model batch {BATCH}, "
        f"median of {args.repeat} interleaved runs (naive: 1 run, torch)"
    )
    header = ["model", "runtime", "method", "images", "seconds", "images/s"]
    print(table(rows, [*header, "vs torch batched", "vs own batched"]))
    print("\nexport gate (48 probe pictures, 16 texts; a runtime that fails is not used):")
    print("\n".join(gates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
