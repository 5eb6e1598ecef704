"""The model's towers under ONNX Runtime: exported once, gated, cached on disk.

On a CPU, embedding is Sightline's whole cost, and onnxruntime runs the same graph faster
than eager torch (fused attention, no Python per layer); int8 dynamic quantization of the
weights roughly halves it again. What stays with sentence-transformers is everything
around the towers, so vectors cannot drift for any other reason: its processor makes the
tensors (resize, crop, normalise; tokenise, pad as trained) and the outputs are
L2-normalised as its ``normalize_embeddings`` does.

An export is accepted only if it agrees with torch on a probe set (the *gate*): fp32 must
give cosine >= ``FP32_MIN_COSINE`` with torch's embeddings of the same inputs; int8 must
keep ``INT8_MIN_OVERLAP`` of fp32's top-10 neighbours (text-to-image and image-to-image)
and cosine >= ``INT8_MIN_COSINE``. The verdict is saved beside the files, so a model that
failed is not exported and gated again on every start; the encoder then falls back (int8
to fp32 to torch) and says why.

Files live under ``<cache>/<sha256 of model id and weights fingerprint>[:16]/``: ``image.onnx``, ``text.onnx``,
their ``.int8.onnx`` forms and ``manifest.json``. Exports are written to a temporary name
and renamed, under a file lock, so workers starting together export once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from services.errors import ModelUnavailable

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the export changes, so stale caches are rebuilt
FP32_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.98
INT8_MIN_OVERLAP = 0.95
TOP_K = 10
PROBE_IMAGES = 48
PROBE_TEXTS = (
    "a photo of a red shoe",
    "a blue striped shirt",
    "a wooden chair",
    "a cat on a sofa",
    "a bowl of fruit on a table",
    "a black handbag",
    "a green dress with dots",
    "a mountain landscape at sunset",
    "a white mug",
    "a pair of sunglasses",
    "a yellow raincoat",
    "close-up of a metal watch",
    "a plate of pasta",
    "a child's toy car",
    "a bicycle leaning on a wall",
    "a bottle of perfume",
)


class InferenceRuntime(StrEnum):
    """What runs the towers."""

    TORCH = "torch"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"


class GateFailed(ModelUnavailable):
    """An exported runtime disagrees with torch beyond the gate's bounds."""


@dataclass(frozen=True)
class GateReport:
    """What the gate measured, kept in the manifest and shown by ``sightline info``."""

    runtime: str
    passed: bool
    # The smallest cosine over the probes against the reference: torch for fp32, fp32 for
    # int8 (images and texts together); text_cosine is fp32's against torch for texts.
    image_cosine: float
    text_cosine: float | None  # None: the text tower stays on torch
    top10_overlap: float | None  # int8 only: shared top-10 neighbours with fp32
    reason: str = ""


def cache_key(model_id: str, fingerprint: str = "") -> str:
    """Directory name for a model's exports (ids hold '/' and ':'), with a fingerprint of
    its weights: a hub name stays the same when its weights change upstream."""
    return hashlib.sha256(f"{model_id}|{fingerprint}|format{FORMAT}".encode()).hexdigest()[:16]


def weights_fingerprint(model: Any) -> str:
    """A cheap hash of a loaded model's weights: every tensor's name and shape and its
    first and last values."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        h.update(flat[:32].float().cpu().numpy().tobytes())
        h.update(flat[-32:].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def probe_images(n: int = PROBE_IMAGES, seed: int = 0) -> list[Image.Image]:
    """Deterministic pictures (shapes on backdrops) for the gate: no data to download, and
    varied enough that neighbours are not ties."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        back = tuple(int(v) for v in rng.integers(0, 256, 3))
        im = Image.new("RGB", (256, 256), back)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = (int(v) for v in rng.integers(0, 200, 2))
            x1, y1 = x0 + int(rng.integers(20, 120)), y0 + int(rng.integers(20, 120))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            if rng.random() < 0.5:
                draw.ellipse((x0, y0, x1, y1), fill=fill)
            else:
                draw.rectangle((x0, y0, x1, y1), fill=fill)
        out.append(im)
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _features(output: Any) -> Any:
    """transformers 5 returns a ModelOutput whose ``pooler_output`` is the projection."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


def _towers(model: Any) -> tuple[Any, Any]:
    """torch modules for the image and text towers of a loaded SentenceTransformer."""
    import torch

    hf: Any = getattr(model[0], "model", None)
    if hf is None or not hasattr(hf, "get_image_features"):
        raise ModelUnavailable(
            f"{type(model[0]).__name__} does not expose get_image_features; only "
            "transformers CLIP/SigLIP-style models can be exported to ONNX"
        )

    class ImageTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, pixel_values: Any) -> Any:
            return _features(self.hf.get_image_features(pixel_values=pixel_values))

    class TextTower(torch.nn.Module):
        def __init__(self, names: Sequence[str]) -> None:
            super().__init__()
            self.hf = hf
            self.names = list(names)

        def forward(self, *tensors: Any) -> Any:
            return _features(
                self.hf.get_text_features(**dict(zip(self.names, tensors, strict=True)))
            )

    return ImageTower().eval(), TextTower


_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def _text_inputs(model: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    features = model.preprocess(list(texts))
    return {k: features[k].numpy() for k in _TEXT_INPUTS if k in features}


def _image_inputs(model: Any, images: Sequence[Image.Image]) -> np.ndarray:
    return np.ascontiguousarray(model.preprocess(list(images))["pixel_values"].numpy())


def _export(model: Any, directory: Path, with_text: bool) -> None:
    """fp32 ONNX graphs of the towers.

    With the TorchScript exporter, which torch marks deprecated in favour of the
    torch.export one: it needs only ``onnx`` (not onnxscript), exports a ViT-B/32 tower in
    seconds, and torch is pinned; the gate checks whatever it produced."""
    import torch

    image_tower, text_class = _towers(model)
    sample = _image_inputs(model, probe_images(2))
    with torch.no_grad(), warnings.catch_warnings():
        # Its deprecation and tracer notes (e.g. CLIP's pooled-token indexing, whose
        # indices are never negative) are for whoever reads the graph: the gate does.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            image_tower,
            (torch.from_numpy(sample),),
            str(directory / "image.onnx"),
            input_names=["pixel_values"],
            output_names=["embeds"],
            dynamic_axes={"pixel_values": {0: "batch"}, "embeds": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        if with_text:
            inputs = _text_inputs(model, PROBE_TEXTS[:2])
            names = list(inputs)
            axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "tokens"} for n in names}
            axes["embeds"] = {0: "batch"}
            torch.onnx.export(
                text_class(names).eval(),
                tuple(torch.from_numpy(inputs[n]) for n in names),
                str(directory / "text.onnx"),
                input_names=names,
                output_names=["embeds"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )


def _quantize(directory: Path, with_text: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for tower in ("image", "text") if with_text else ("image",):
        quantize_dynamic(
            directory / f"{tower}.onnx",
            directory / f"{tower}.int8.onnx",
            weight_type=QuantType.QInt8,
        )


class Towers:
    """onnxruntime sessions for the image tower and, unless a separate text model is in
    use, the text tower."""

    def __init__(
        self,
        model: Any,
        directory: Path,
        int8: bool,
        threads: int,
        device: str,
        pixels: Callable[[Sequence[Image.Image]], np.ndarray] | None = None,
        spin: bool = True,
    ):
        import onnxruntime as ort

        # What makes the model's pixel values: the processor's fast path when the encoder
        # found one equal to it (services.image_inputs), else the processor itself.
        self.pixels = pixels or (lambda images: _image_inputs(model, images))

        suffix = ".int8.onnx" if int8 else ".onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads that spin between operators answer a query soonest; beside a worker's
        # decode thread they hold the core it needs, and the model waits for it at every
        # operator (ingest 6% slower on 2 cores). ``Settings.spin`` says which.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        providers = _providers(device)
        self.model = model
        self.providers = providers
        self.image = ort.InferenceSession(
            str(directory / f"image{suffix}"), options, providers=providers
        )
        text = directory / f"text{suffix}"
        self.text = (
            ort.InferenceSession(str(text), options, providers=providers) if text.exists() else None
        )

    def encode_images(self, images: Sequence[Image.Image], batch_size: int) -> np.ndarray:
        """Unit vectors, preprocessed by the model's own processor."""
        out = []
        for i in range(0, len(images), batch_size):
            pixels = self.pixels(images[i : i + batch_size])
            out.append(self.image.run(None, {"pixel_values": pixels})[0])
        return _normalise(np.concatenate(out))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Unit vectors of one batch the model's processor already made."""
        return _normalise(self.image.run(None, {"pixel_values": pixels})[0])

    def encode_texts(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Unit vectors, tokenised (and padded) as the torch path does."""
        assert self.text is not None
        wanted = {i.name for i in self.text.get_inputs()}
        out = []
        for i in range(0, len(texts), batch_size):
            inputs = _text_inputs(self.model, texts[i : i + batch_size])
            out.append(self.text.run(None, {k: v for k, v in inputs.items() if k in wanted})[0])
        return _normalise(np.concatenate(out))


def _top(queries: np.ndarray, items: np.ndarray, k: int) -> list[set[int]]:
    scores = queries @ items.T
    return [set(np.argsort(-row)[:k].tolist()) for row in scores]


def gate(
    runtime: InferenceRuntime,
    torch_images: np.ndarray,
    torch_texts: np.ndarray | None,
    fp32: Towers,
    int8: Towers | None,
    images: Sequence[Image.Image],
) -> GateReport:
    """Compare a runtime's embeddings of the probe set with torch's (and int8's with
    fp32's neighbours): the bounds in the module docstring."""
    fp_images = fp32.encode_images(images, 16)
    fp_texts = fp32.encode_texts(PROBE_TEXTS, 16) if fp32.text is not None else None
    image_cos = float((fp_images * torch_images).sum(axis=1).min())
    text_cos = (
        float((fp_texts * torch_texts).sum(axis=1).min())
        if fp_texts is not None and torch_texts is not None
        else None
    )
    worst = min(image_cos, text_cos if text_cos is not None else 1.0)
    if worst < FP32_MIN_COSINE:
        return GateReport(
            runtime.value,
            False,
            image_cos,
            text_cos,
            None,
            f"onnx fp32 embeddings differ from torch's (cosine {worst:.5f} < "
            f"{FP32_MIN_COSINE}): the export does not reproduce the model",
        )
    if int8 is None:
        return GateReport(runtime.value, True, image_cos, text_cos, None)
    q_images = int8.encode_images(images, 16)
    q_texts = int8.encode_texts(PROBE_TEXTS, 16) if int8.text is not None else None
    q_cos = float((q_images * fp_images).sum(axis=1).min())
    if q_texts is not None and fp_texts is not None:
        q_cos = min(q_cos, float((q_texts * fp_texts).sum(axis=1).min()))
    k = min(TOP_K, len(images) - 1)
    pairs: list[tuple[set[int], set[int]]] = list(
        zip(_top(q_images, q_images, k + 1), _top(fp_images, fp_images, k + 1), strict=True)
    )
    if q_texts is not None and fp_texts is not None:
        pairs += zip(_top(q_texts, q_images, k), _top(fp_texts, fp_images, k), strict=True)
    overlap = float(np.mean([len(a & b) / len(b) for a, b in pairs]))
    passed = overlap >= INT8_MIN_OVERLAP and q_cos >= INT8_MIN_COSINE
    reason = (
        ""
        if passed
        else f"int8 drifts from fp32: top-{k} overlap {overlap:.3f} (needs "
        f"{INT8_MIN_OVERLAP}), cosine {q_cos:.4f} (needs {INT8_MIN_COSINE})"
    )
    return GateReport(runtime.value, passed, q_cos, text_cos, overlap, reason)


def _lock(path: Path) -> Any:
    from filelock import FileLock

    return FileLock(str(path))


def prepare(
    model: Any,
    model_id: str,
    runtime: InferenceRuntime,
    cache: Path,
    threads: int,
    device: str,
    with_text: bool,
    torch_encode: Callable[[Sequence[Any], str], np.ndarray],
    pixels: Callable[[Sequence[Image.Image]], np.ndarray] | None = None,
    spin: bool = True,
) -> tuple[Towers, GateReport]:
    """Towers for ``runtime``, exported and gated on first use.

    Raises:
        GateFailed: the runtime disagrees with torch (the report's reason says how).
        ModelUnavailable: the model cannot be exported.
    """
    int8 = runtime is InferenceRuntime.ONNX_INT8
    fingerprint = weights_fingerprint(model)
    directory = cache / cache_key(model_id, fingerprint)
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / "manifest.json"
    # A verdict holds for the execution provider it was measured on.
    verdict = f"{runtime.value}@{_providers(device)[0]}"
    with _lock(directory / ".lock"):
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        wanted = {"model_id": model_id, "fingerprint": fingerprint, "with_text": with_text}
        if any(manifest.get(k) != v for k, v in wanted.items()):
            manifest = {**wanted, "gates": {}}
            log.info("exporting %s to ONNX under %s", model_id, directory)
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                _export(model, Path(tmp), with_text)
                for f in Path(tmp).iterdir():
                    os.replace(f, directory / f.name)
        if int8 and not (directory / "image.int8.onnx").exists():
            _quantize(directory, with_text)
        known = manifest["gates"].get(verdict)
        if known is None:
            images = probe_images()
            fp32 = Towers(model, directory, False, threads, device, pixels)
            quant = Towers(model, directory, True, threads, device, pixels) if int8 else None
            report = gate(
                runtime,
                torch_encode(images, "image"),
                torch_encode(list(PROBE_TEXTS), "text") if with_text else None,
                fp32,
                quant,
                images,
            )
            manifest["gates"][verdict] = asdict(report)
            tmp_manifest = manifest_path.with_suffix(".tmp")
            tmp_manifest.write_text(json.dumps(manifest, indent=2))
            os.replace(tmp_manifest, manifest_path)
        else:
            report = GateReport(**known)
    if not report.passed:
        raise GateFailed(f"runtime {runtime.value} not used for {model_id}: {report.reason}")
    return Towers(model, directory, int8, threads, device, pixels, spin), report
