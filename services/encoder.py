"""The embedding model: any sentence-transformers multimodal (text + image) model.

The constructor is cheap; ``load()`` runs once per process behind a lock, so importing or
constructing never touches weights and tests can build an Encoder for a tiny local model.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from services.errors import InvalidQuery, ModelUnavailable
from services.image_inputs import ImageInputs
from services.onnx_towers import GateFailed, GateReport, InferenceRuntime, Towers
from services.onnx_towers import prepare as prepare_towers

log = logging.getLogger(__name__)

_FINGERPRINT_BYTES = 1 << 20


class Modality(StrEnum):
    """What an input is; sentence-transformers routes each to its tower."""

    TEXT = "text"
    IMAGE = "image"


class ModelFamily(StrEnum):
    """Decides how similarities become probabilities (softmax vs sigmoid)."""

    CLIP = "clip"
    SIGLIP = "siglip"


@dataclass(frozen=True)
class ModelIdentity:
    """What a collection records so vectors from different models never mix."""

    model_id: str
    size: int
    distance: str = "cosine"

    def as_dict(self) -> dict[str, Any]:
        """Plain form stored alongside a collection."""
        return {"model_id": self.model_id, "size": self.size, "distance": self.distance}


def local_model_id(path: Path) -> str:
    """Identity of a model in a local directory: its name plus a fingerprint of its files.

    Two different models saved under the same folder name must not pass as one, so the id
    hashes config.json and the size and first megabyte of each weight file (cheap even for
    large weights).
    """
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if not f.is_file():
            continue
        rel = f.relative_to(path).as_posix()
        if f.name == "config.json":
            h.update(rel.encode() + f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".pt"):
            with f.open("rb") as fh:
                h.update(
                    rel.encode() + str(f.stat().st_size).encode() + fh.read(_FINGERPRINT_BYTES)
                )
    return f"local:{path.name}@{h.hexdigest()[:16]}"


def _input_size(model: Any) -> int | None:
    """The image processor's target size, so decoding can stop at that resolution."""
    processor = getattr(model[0], "processor", None)
    image_processor = getattr(processor, "image_processor", None)
    for attr in ("size", "crop_size"):
        size = getattr(image_processor, attr, None)
        if size is None:
            continue
        get = size.get if isinstance(size, dict) else lambda k, s=size: getattr(s, k, None)
        for key in ("shortest_edge", "height"):
            value = get(key)
            if value:
                return int(value)
    return None


def _limit_text_length(model: Any) -> None:
    """Truncate texts to the text tower's positions (sentence-transformers leaves CLIP's
    unbounded, and a long text then fails inside the model instead of being cut)."""
    hf = getattr(model[0], "model", None)
    text_config = getattr(getattr(hf, "config", None), "text_config", None)
    positions = getattr(text_config, "max_position_embeddings", None)
    current = getattr(model, "max_seq_length", None)
    if isinstance(positions, int) and (current is None or current > positions):
        model.max_seq_length = positions


def _pad_texts_as_trained(model: Any) -> None:
    """Pad texts the way the text tower was trained. SigLIP and SigLIP2 pool one position
    of a sequence padded to a fixed length, so their text embedding depends on the
    padding; sentence-transformers pads to the longest text of a batch, which moves every
    score (by up to 0.05 against transformers' own pipeline). Decided from the loaded
    config's model type, not the checkpoint's name, so fine-tunes are covered; the
    length is the text tower's positions (64 for SigLIP), as the reference pipeline uses."""
    module = model[0]
    config = getattr(getattr(module, "model", None), "config", None)
    text_config = getattr(config, "text_config", None) or config
    kind = str(getattr(text_config, "model_type", "") or getattr(config, "model_type", ""))
    length = getattr(text_config, "max_position_embeddings", None)
    if "siglip" not in kind.lower() or not isinstance(length, int):
        return
    kwargs = dict(getattr(module, "processing_kwargs", None) or {})
    kwargs["text"] = {
        **dict(kwargs.get("text") or {}),
        "padding": "max_length",
        "max_length": length,
        "truncation": True,
    }
    module.processing_kwargs = kwargs


class Encoder:
    """Embeds images and texts into one L2-normalised float32 space."""

    def __init__(
        self,
        model_name: str,
        device: str = "cpu",
        batch_size: int = 32,
        cache_dir: Path | None = None,
        text_model: str | None = None,
        trust_remote_code: bool = False,
        runtime: str = "torch",
        onnx_cache: Path | None = None,
        threads: int | None = None,
        spin: bool = True,
    ) -> None:
        self.model_name = model_name
        self.runtime = InferenceRuntime(runtime)
        self.onnx_cache = onnx_cache
        self.threads = threads
        self.spin = spin  # onnxruntime's threads spin-wait between operators
        self._towers: Towers | None = None
        # The image processor's fast path, where it reproduces the processor exactly.
        self._pixels: ImageInputs | None = None
        # What actually runs (a runtime that fails its gate falls back), and why.
        self.runtime_active = InferenceRuntime.TORCH
        self.runtime_note = ""
        self.gate: GateReport | None = None  # what the export gate measured, when one ran
        self.text_model_name = text_model
        self.trust_remote_code = trust_remote_code
        self._text_model: Any = None
        self.device = device
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._model: Any = None
        self._identity: ModelIdentity | None = None
        self._logit_scale = 100.0
        self._logit_bias: float | None = None
        self._family = ModelFamily.CLIP
        self._input_size: int | None = None
        # Called as observer(modality, items, seconds) after each encode (e.g. metrics).
        self.observer: Callable[[Modality, int, float], None] | None = None

    @property
    def loaded(self) -> bool:
        """True once weights are in memory."""
        return self._model is not None

    def load(self) -> None:
        """Load the model once; later calls return at once.

        Raises:
            ModelUnavailable: the model cannot be found or is not multimodal.
        """
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)
            self._load_locked()

    def _load_locked(self) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-weight progress bars drown CLI output

        model, model_id = self._load_model(self.model_name)
        modalities = set(getattr(model, "modalities", []) or [])
        if not {Modality.TEXT.value, Modality.IMAGE.value} <= modalities:
            raise ModelUnavailable(
                f"model {self.model_name!r} is not a text+image model (it handles "
                f"{sorted(modalities) or 'unknown inputs'}); Sightline needs a CLIP/SigLIP-style "
                "multimodal model"
            )
        dim = model.get_embedding_dimension()
        if not dim:
            raise ModelUnavailable(f"model {self.model_name!r} does not report its vector size")
        self._read_logit_params(model)
        self._input_size = _input_size(model)
        _limit_text_length(model)
        _pad_texts_as_trained(model)
        if self.text_model_name is not None:
            text_model, text_id = self._load_model(self.text_model_name)
            if Modality.TEXT.value not in set(getattr(text_model, "modalities", []) or []):
                raise ModelUnavailable(f"text model {self.text_model_name!r} does not embed text")
            text_dim = text_model.get_embedding_dimension()
            if text_dim != dim:
                raise ModelUnavailable(
                    f"text model {self.text_model_name!r} makes {text_dim}-dimensional vectors "
                    f"but image model {self.model_name!r} makes {dim}: they are not one space"
                )
            _limit_text_length(text_model)
            self._text_model = text_model
            # Both models shape the stored vectors: a collection built with another pair
            # is refused like one built with another model.
            model_id = f"{model_id}+text:{text_id}"
        self._model = model
        self._pixels = ImageInputs.of(model)
        self._start_runtime(model_id)
        if self.runtime_active is InferenceRuntime.ONNX_INT8:
            # int8 weights give other vectors (cosine ~0.99 to fp32): a collection records
            # which function made its vectors, so switching to or from int8 is a re-embed.
            model_id = f"{model_id}#int8"
        self._identity = ModelIdentity(model_id=model_id, size=int(dim))

    def _start_runtime(self, model_id: str) -> None:
        """Export, gate and open the ONNX towers when asked for; fall back (int8 to fp32
        to torch) with the reason in ``runtime_note`` when a gate or export fails."""
        if self.runtime is InferenceRuntime.TORCH:
            return
        cache = self.onnx_cache or Path.home() / ".cache" / "sightline" / "onnx"
        threads = self.threads or 0  # 0: onnxruntime's default, one per core
        notes = []
        for runtime in (self.runtime, InferenceRuntime.ONNX):
            try:
                self._towers, self.gate = prepare_towers(
                    self._model,
                    model_id,
                    runtime,
                    cache,
                    threads,
                    self.device,
                    self._text_model is None,
                    self._torch_encode,
                    self._pixels,
                    self.spin,
                )
            except Exception as e:  # any export, quantization or session failure falls back
                notes.append(
                    str(e)
                    if isinstance(e, GateFailed)
                    else f"runtime {runtime.value} not used: {e!r}"
                )
                if runtime is InferenceRuntime.ONNX:
                    break
                continue
            self.runtime_active = runtime
            break
        self.runtime_note = "; ".join(notes)
        if notes:
            log.warning("%s; running on %s", self.runtime_note, self.runtime_active.value)

    def _torch_encode(self, items: Sequence[Any], modality: str) -> np.ndarray:
        vectors = self._model.encode(
            list(items),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _load_model(self, name: str) -> tuple[Any, str]:
        """A SentenceTransformer by hub name or local directory, and its identity."""
        from sentence_transformers import SentenceTransformer  # heavy: import on first load

        path = Path(name).expanduser()
        is_local = path.is_dir()
        try:
            model = SentenceTransformer(
                str(path) if is_local else name,
                device=self.device,
                cache_folder=str(self.cache_dir) if self.cache_dir else None,
                trust_remote_code=self.trust_remote_code,
            )
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            hint = (
                " It ships its own code: set SIGHTLINE_TRUST_REMOTE_CODE=true if you trust it."
                if "trust_remote_code" in str(e)
                else ""
            )
            raise ModelUnavailable(
                f"cannot load model {name!r}: {e}.{hint} If this machine is offline and the "
                "model is not cached, download it elsewhere and point SIGHTLINE_MODEL at the "
                "local directory (for example SIGHTLINE_MODEL=/models/clip-ViT-B-32)."
            ) from e
        return model, local_model_id(path.resolve()) if is_local else name

    def _read_logit_params(self, model: Any) -> None:
        """Read the temperature (and SigLIP bias) the model was trained with."""
        hf = getattr(model[0], "model", None)
        model_type = str(getattr(getattr(hf, "config", None), "model_type", "")).lower()
        self._family = ModelFamily.SIGLIP if "siglip" in model_type else ModelFamily.CLIP
        scale = getattr(hf, "logit_scale", None)
        if scale is not None:
            self._logit_scale = float(math.exp(float(scale.detach().reshape(-1)[0])))
        bias = getattr(hf, "logit_bias", None)
        self._logit_bias = float(bias.detach().reshape(-1)[0]) if bias is not None else None

    @property
    def input_size(self) -> int | None:
        """Pixels on the shorter side the model's processor resizes to (None: unknown)."""
        self.load()
        return self._input_size

    @property
    def identity(self) -> ModelIdentity:
        """Model id, vector size and distance (loads the model if needed)."""
        self.load()
        assert self._identity is not None  # set by load()
        return self._identity

    @property
    def family(self) -> ModelFamily:
        """CLIP (softmax) or SigLIP (sigmoid) scoring."""
        self.load()
        return self._family

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale) as trained: the multiplier applied to cosine similarities."""
        self.load()
        return self._logit_scale

    @property
    def logit_bias(self) -> float | None:
        """SigLIP's learned bias; None for CLIP-family models."""
        self.load()
        return self._logit_bias

    def _encode(self, items: Sequence[Any], modality: Modality) -> np.ndarray:
        self.load()
        if not items:
            return np.zeros((0, self.identity.size), dtype=np.float32)
        started = time.perf_counter()
        towers = self._towers
        if towers is not None and modality is Modality.IMAGE:
            vectors = towers.encode_images(list(items), self.batch_size)
        elif towers is not None and towers.text is not None:
            vectors = towers.encode_texts(list(items), self.batch_size)
        else:
            text = modality is Modality.TEXT and self._text_model is not None
            model = self._text_model if text else self._model
            vectors = model.encode(
                list(items),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        if self.observer is not None:
            self.observer(modality, len(items), time.perf_counter() - started)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed RGB images; rows are unit-length float32 vectors."""
        return self._encode(images, Modality.IMAGE)

    def preprocess_images(self, images: Sequence[Image.Image]) -> list[np.ndarray] | None:
        """Each image's model input, made by the model's own processor (resize, crop,
        normalise), for ``encode_preprocessed``: a pipeline prepares the next batch on
        another thread while the model runs this one. None when the model's image input
        is more than pixel values (then embed the images with ``encode_images``)."""
        self.load()
        if not images:
            return []
        if self._pixels is not None:
            return list(self._pixels(images))
        features = self._model.preprocess(list(images))
        pixels = features.get("pixel_values")
        if set(features) - {"pixel_values", "modality"} or pixels is None:
            return None
        array = np.ascontiguousarray(pixels.numpy(), dtype=np.float32)
        return list(array)

    def encode_preprocessed(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Embed what ``preprocess_images`` made: the same vectors ``encode_images`` gives
        for those images (the same processor, the same forward pass)."""
        self.load()
        if not inputs:
            return np.zeros((0, self.identity.size), dtype=np.float32)
        started = time.perf_counter()
        out = []
        for i in range(0, len(inputs), self.batch_size):
            pixels = np.stack(inputs[i : i + self.batch_size])
            if self._towers is not None:
                out.append(self._towers.encode_pixels(pixels))
            else:
                out.append(self._torch_forward(pixels))
        vectors = np.concatenate(out)
        if self.observer is not None:
            self.observer(Modality.IMAGE, len(inputs), time.perf_counter() - started)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _torch_forward(self, pixels: np.ndarray) -> np.ndarray:
        """The model's forward pass on pixel values, as ``SentenceTransformer.encode`` runs
        it after preprocessing (same module, same normalisation)."""
        import torch

        with torch.inference_mode():
            features = {
                "pixel_values": torch.from_numpy(pixels).to(self._model.device),
                "modality": Modality.IMAGE.value,
            }
            embeddings = self._model(features)["sentence_embedding"]
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1)
            return np.asarray(embeddings.float().cpu().numpy(), dtype=np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; rows are unit-length float32 vectors. Texts longer than the text
        tower's context are truncated to it, as the model was trained.

        Raises:
            InvalidQuery: a text is not valid Unicode (an unpaired surrogate).
        """
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidQuery(f"text is not valid Unicode: {e.reason}") from e
        return self._encode(texts, Modality.TEXT)
