"""The model's image processor, run without its per-image overhead where it is the plain
PIL pipeline.

transformers' PIL image processor (what CLIP and SigLIP get without torchvision) takes
7 ms an image on 2 cores for a 640x480 photo, against a ViT-B/32 forward pass of 40-50 ms:
about a seventh of onnxruntime's encode. Half of it is not the resize but the steps
around it: a numpy copy of the whole photo, channel moves, a float64 rescale and a
normalisation, each a pass over the pixels. Here the resize is the same PIL call with the
same arguments, the crop the same indices, and rescale plus normalisation one lookup per
channel of a table computed with the processor's own float operations (uint8 in, so 256
values cover every input): the tensors are bit-for-bit the processor's. That is checked
when a model is loaded, on probe images of several shapes, against the model's own
``preprocess``; anything else (another processor, other options, a mismatch) keeps the
processor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# What the fast path reproduces: transformers' PIL backends of these processors.
_PROCESSORS = frozenset({"CLIPImageProcessorPil", "SiglipImageProcessorPil"})
_PROBE_SHAPES = ((640, 480), (300, 500), (224, 224), (97, 131))


@dataclass(frozen=True)
class ImageInputs:
    """One processor's settings, applied to RGB images as it applies them."""

    shortest_edge: int | None  # resize the shorter side to this (aspect kept)...
    size: tuple[int, int] | None  # ...or to exactly (height, width)
    resample: int
    crop: tuple[int, int] | None  # centre crop (height, width)
    table: np.ndarray = field(repr=False)  # (3, 256) float32: uint8 -> rescaled, normalised

    @classmethod
    def of(cls, model: Any) -> ImageInputs | None:
        """The fast path for a loaded SentenceTransformer's image processor, if its output
        equals ``model.preprocess`` on the probe images; else None."""
        processor = getattr(getattr(model[0], "processor", None), "image_processor", None)
        if processor is None or type(processor).__name__ not in _PROCESSORS:
            return None
        try:
            fast = cls._from(processor)
        except (AttributeError, TypeError, ValueError):
            return None
        if fast is None:
            return None
        probes = _probes()
        try:
            reference = model.preprocess(probes)["pixel_values"].numpy()
        except Exception:  # the reference could not run: nothing to compare with
            return None
        if reference.shape != (len(probes), 3, *fast.output_shape) or not np.array_equal(
            fast(probes), reference
        ):
            log.info("image processor %s: fast path differs, kept the processor", processor)
            return None
        return fast

    @classmethod
    def _from(cls, p: Any) -> ImageInputs | None:
        if getattr(p, "do_pad", False) or not getattr(p, "do_convert_rgb", True):
            return None
        shortest, size = None, None
        if p.do_resize:
            dims = dict(p.size)
            edge, height, width = dims.get("shortest_edge"), dims.get("height"), dims.get("width")
            if edge and not dims.get("longest_edge") and not height:
                shortest = int(edge)
            elif height and width and not edge:
                size = (int(height), int(width))
            else:
                return None
        crop = None
        if p.do_center_crop:
            crop = (int(p.crop_size["height"]), int(p.crop_size["width"]))
            # A crop larger than the resized image is padded by the processor: not here.
            smallest = shortest if shortest is not None else min(size) if size else 0
            if max(crop) > smallest:
                return None
        if crop is None and size is None:
            return None  # output shape would follow each input: not batched as one tensor
        # The processor's own operations, value by value: float64 rescale then float32,
        # then (x - mean) / std in float32 (transformers.image_transforms).
        values = np.arange(256, dtype=np.uint8)
        x = (
            (values.astype(np.float64) * float(p.rescale_factor)).astype(np.float32)
            if p.do_rescale
            else values.astype(np.float32)
        )
        table = np.repeat(x[None, :], 3, axis=0)
        if p.do_normalize:
            mean = np.array(_per_channel(p.image_mean), dtype=np.float32)[:, None]
            std = np.array(_per_channel(p.image_std), dtype=np.float32)[:, None]
            table = (table - mean) / std
        return cls(shortest, size, int(p.resample), crop, table.astype(np.float32))

    @property
    def output_shape(self) -> tuple[int, int]:
        """(height, width) of every output."""
        if self.crop is not None:
            return self.crop
        assert self.size is not None
        return self.size

    def _resized(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if self.shortest_edge is not None:
            # get_resize_output_image_size(default_to_square=False): the long side truncated.
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.shortest_edge * long / short)
            height, width = (
                (self.shortest_edge, new_long) if w > h else (new_long, self.shortest_edge)
            )
        elif self.size is not None:
            height, width = self.size
        else:
            return image
        return image.resize((width, height), resample=self.resample)

    def _one(self, image: Image.Image) -> np.ndarray:
        resized = np.asarray(self._resized(image))
        if self.crop is not None:
            ch, cw = self.crop
            h, w = resized.shape[:2]
            top, left = (h - ch) // 2, (w - cw) // 2  # never negative (checked in _from)
            resized = resized[top : top + ch, left : left + cw]
        return resized

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, 3, H, W) float32, as the processor's ``pixel_values``."""
        out = np.empty((len(images), 3, *self.output_shape), dtype=np.float32)
        for i, image in enumerate(images):
            pixels = self._one(_rgb(image))
            for c in range(3):
                np.take(self.table[c], pixels[..., c], out=out[i, c])
        return out


def _rgb(image: Image.Image) -> Image.Image:
    """RGB as the processor makes it: transparency composited on white (its own function)."""
    if image.mode == "RGB" and image.info.get("transparency") is None:
        return image
    from transformers.image_transforms import convert_to_rgb

    return Image.fromarray(np.asarray(convert_to_rgb(image, return_numpy=True)))


def _per_channel(value: Any) -> list[float]:
    return list(value) if isinstance(value, (list, tuple)) else [float(value)] * 3


def _probes() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    out = []
    for w, h in _PROBE_SHAPES:
        # Smooth gradients plus noise: values across the whole 0-255 range.
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1)
        noise = rng.integers(-40, 40, (h, w, 3))
        out.append(Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)))
    return out
