"""The image processor's fast path against the processor itself (transformers' PIL
backend, as the reference pipeline runs it): bit-for-bit, or not used."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sentence_transformers import SentenceTransformer
from transformers import AutoProcessor

from services.encoder import Encoder
from services.image_inputs import ImageInputs
from tests.test_reference import _images, model_dirs  # noqa: F401


def _awkward() -> list[Image.Image]:
    """Modes and shapes the processor handles its own way: transparency (composited on
    white), greyscale, a palette, portrait, tiny and long thin images, a JPEG."""
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 255, (90, 120, 4), dtype=np.uint8), "RGBA")
    grey = Image.fromarray(rng.integers(0, 255, (333, 222), dtype=np.uint8), "L")
    palette = grey.convert("P")
    portrait = Image.fromarray(rng.integers(0, 255, (500, 300, 3), dtype=np.uint8))
    buf = io.BytesIO()
    portrait.save(buf, format="JPEG", quality=70)
    return [
        rgba,
        grey,
        palette,
        portrait,
        Image.open(io.BytesIO(buf.getvalue())),
        Image.new("RGB", (7, 5), (200, 10, 30)),
        Image.fromarray(rng.integers(0, 255, (40, 900, 3), dtype=np.uint8)),
    ]


def test_fast_path_equals_the_processor_bit_for_bit(
    model_dirs: tuple[Path, Path],  # noqa: F811
) -> None:
    """CLIP (crop after a shorter-side resize), its hub layout and SigLIP (a fixed
    square): the same float32 tensors as the reference processor, on real photos."""
    ours, theirs = model_dirs
    model = SentenceTransformer(str(ours), device="cpu")
    fast = ImageInputs.of(model)
    assert fast is not None
    images = [*_images(), *_awkward()]
    want = AutoProcessor.from_pretrained(str(theirs)).image_processor(images, return_tensors="np")[
        "pixel_values"
    ]
    got = fast(images)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)
    # The encoder uses it for the pipeline's preprocessing.
    encoder = Encoder(str(ours), batch_size=4)
    inputs = encoder.preprocess_images(images)
    assert inputs is not None and np.array_equal(np.stack(inputs), want)


class _Shifted:
    """A model whose own preprocessing differs from what its processor's settings say."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __getitem__(self, i: int) -> Any:
        return self.model[i]

    def preprocess(self, images: list[Image.Image]) -> dict[str, Any]:
        out = self.model.preprocess(images)
        out["pixel_values"] = out["pixel_values"] + 1e-3
        return out


def test_fast_path_is_refused_where_it_would_differ(tiny_model_dir: Path) -> None:
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    assert ImageInputs.of(model) is not None
    assert ImageInputs.of(_Shifted(model)) is None  # checked against the model, not assumed
    processor = model[0].processor.image_processor
    processor.do_pad = True  # an option the fast path does not reproduce
    try:
        assert ImageInputs.of(model) is None
    finally:
        processor.do_pad = False
    crop = dict(processor.crop_size)
    edge = dict(processor.size)["shortest_edge"]
    processor.crop_size = {"height": edge + 8, "width": edge + 8}  # padded by the processor
    try:
        assert ImageInputs.of(model) is None
    finally:
        processor.crop_size = crop
    assert ImageInputs.of(model) is not None
