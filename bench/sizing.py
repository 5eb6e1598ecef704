"""Sizing figures for the deployment guide: memory per model process, bytes per image.

- **Memory per process.** A fresh process per inference runtime loads the encoder as a
  web or worker process does (the ViT-B/32 architecture, random weights: the production
  default's size), encodes one image and one text, and reports its resident set (VmRSS);
  for ONNX, also the peak of the first process on a host, which exports and gates the
  towers (later ones find them cached). Ratios are against torch in the same run. This is what each gunicorn
  worker and each Celery worker process costs before requests.
- **Disk per image.** The stored 256-px thumbnail (the one ingest makes) of real
  photographs (scikit-image, scikit-learn) and of synthetic 640x480 product shots, and
  the originals as JPEG q90, per image and per million.

Run: ``.venv/bin/python -m bench.sizing [--model vitb32] [--runtimes torch,onnx,onnx-int8]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image

from bench.common import build_model, product_photos, table

_CHILD = """
import json, os, sys
from PIL import Image
from services.encoder import Encoder
enc = Encoder(sys.argv[1], runtime=sys.argv[2], onnx_cache=__import__("pathlib").Path(sys.argv[3]))
enc.load()
enc.encode_images([Image.new("RGB", (224, 224), (120, 30, 200))])
enc.encode_texts(["a red dress"])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
kb = lambda k: int(status[k].split()[0])
print(json.dumps({"rss_mb": kb("VmRSS") / 1024, "peak_mb": kb("VmHWM") / 1024,
                  "active": enc.runtime_active.value}))
"""


def process_memory(model: str, runtime: str, cache: Path) -> dict[str, float | str]:
    """RSS of a fresh process that loaded the encoder under ``runtime``."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, model, runtime, str(cache)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    result: dict[str, float | str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def thumbnail_bytes(images: list[Image.Image], size: int = 256) -> float:
    """Mean bytes of the thumbnails ingest writes (``ThumbnailStore.make``'s settings)."""
    total = 0
    for image in images:
        thumb = image.copy()
        thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        thumb.convert("RGB").save(buf, format="JPEG", quality=85, optimize=True)
        total += len(buf.getvalue())
    return total / len(images)


def jpeg_bytes(images: list[Image.Image]) -> float:
    """Mean bytes of the images as JPEG q90 (a typical upload)."""
    total = 0
    for image in images:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG", quality=90)
        total += len(buf.getvalue())
    return total / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vitb32")
    parser.add_argument("--runtimes", default="torch,onnx,onnx-int8")
    args = parser.parse_args()

    model = str(build_model(args.model))
    rows, base = [], None
    with tempfile.TemporaryDirectory() as cache:
        for runtime in args.runtimes.split(","):
            # The first process exports and gates the towers into an empty cache; the
            # second finds them there, as every later process on the host does.
            first = process_memory(model, runtime, Path(cache))
            m = process_memory(model, runtime, Path(cache))
            base = base or float(m["rss_mb"])
            rows.append(
                [
                    runtime,
                    str(m["active"]),
                    f"{float(m['rss_mb']):.0f}",
                    f"{float(first['peak_mb']):.0f}",
                    f"{float(m['rss_mb']) / base:.2f}x",
                ]
            )
    print(f"\nMemory of one process with the encoder loaded ({args.model})\n")
    print(table(rows, ["runtime", "ran as", "RSS MB", "first start peak MB", "RSS vs torch"]))

    from demo.photos import real_photos

    products: list[Image.Image] = [Image.open(io.BytesIO(p)) for p in product_photos(40, seed=3)]
    sets: dict[str, list[Image.Image]] = {
        "real photos (skimage, sklearn)": list(real_photos().values()),
        "synthetic products 640x480": products,
    }
    rows = []
    for name, images in sets.items():
        thumb, original = thumbnail_bytes(images), jpeg_bytes(images)
        rows.append(
            [
                name,
                str(len(images)),
                f"{original / 1024:.0f}",
                f"{thumb / 1024:.1f}",
                f"{thumb * 1e6 / 1e9:.1f}",
                f"{thumb / original:.3f}",
            ]
        )
    print("\nDisk per image: originals as JPEG q90, and the 256-px thumbnail ingest writes\n")
    print(
        table(
            rows,
            ["images", "n", "original KB", "thumbnail KB", "thumbnails GB/1M", "thumb/original"],
        )
    )


if __name__ == "__main__":
    main()
