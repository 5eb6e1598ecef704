"""Zero-shot tagging: image vectors against label vectors, scored the way the model was trained.

CLIP was trained with a softmax over ``logit_scale * cosine``, so a single-label dimension
(exactly one colour applies) is a softmax over its labels. SigLIP was trained with an
independent sigmoid per pair, ``sigmoid(logit_scale * cosine + logit_bias)``, so each label
gets its own probability. A multi-label dimension needs a probability per label even for
CLIP, which has no bias: there each label competes with an average label of its dimension
(a binary softmax of "this label" against a competitor whose logit is the mean of the
labels' logits), ``sigmoid(logit_scale * (cos(x, label) - mean over labels m of cos(x, m)))``.
The competitor is the mean of the cosines, not the cosine with the normalised mean vector:
label vectors are far from orthogonal (real CLIP text vectors: mean norm about 0.8), so
normalising the mean inflates the competitor by ``1 / |mean|`` and pushes every label,
the right one included, below 0.5 (a black image scored 0.09 for "black" that way).
A label is assigned at probability 0.5 and up: it beats the dimension's average label.

OCR fusion (per taxonomy, ``ocr.enabled``): when the OCR reads text in an image, the text
is embedded with the text tower and its similarity to each label, centred within the
dimension, is added to the image's similarity before scoring::

    fused(x, l) = cos(image, l) + weight * (cos(text, l) - mean over labels m of cos(text, m))

Centring keeps the text's contribution relative (text-to-text similarities are uniformly
high, so raw values would lift every label in a sigmoid), and for a softmax it changes
nothing but the ranking evidence. No text read, or text below ``min_confidence``, leaves
the image score as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from services.encoder import Encoder, ModelFamily
from services.errors import InvalidQuery, NoTaxonomy
from services.images import decode_image
from services.settings import ImageLimits
from services.tagging.labels import DimensionVectors, LabelBank, LabelSet

MULTI_LABEL_THRESHOLD = 0.5


PAYLOAD_TOP = 5  # scores kept per dimension in the image payload


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function."""
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def label_probabilities(
    cos: np.ndarray,
    family: ModelFamily,
    scale: float,
    bias: float | None,
    multi_label: bool,
    centroid_cos: np.ndarray | None = None,
) -> np.ndarray:
    """Probabilities for (images x labels) cosine similarities of one dimension.

    ``centroid_cos`` (images,) is the similarity to the dimension's centroid, needed for
    CLIP multi-label scoring.
    """
    cos = np.asarray(cos, dtype=np.float64)
    if family is ModelFamily.SIGLIP:
        return sigmoid(scale * cos + (bias or 0.0))
    if not multi_label:
        return softmax(scale * cos)
    if centroid_cos is None:
        raise ValueError("CLIP multi-label scoring needs the centroid similarity")
    return sigmoid(scale * (cos - centroid_cos[:, None]))


@dataclass(frozen=True)
class DimensionTags:
    """One dimension's result for one image: every label with its score, best first."""

    name: str
    multi_label: bool
    scores: list[tuple[str, float]]
    assigned: list[str]

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API and CLI."""
        return {
            "name": self.name,
            "multi_label": self.multi_label,
            "labels": [{"label": label, "score": round(s, 6)} for label, s in self.scores],
            "assigned": self.assigned,
        }


@dataclass(frozen=True)
class TagResult:
    """All dimensions for one image."""

    dimensions: list[DimensionTags]
    version: str | None = None
    ocr_text: str | None = None

    def payload(self) -> dict[str, Any]:
        """What ingest writes into the image payload: assigned labels (filterable as
        ``tags.<dimension>``), the top scores, and the taxonomy version that produced them."""
        return {
            "tags": {d.name: d.assigned for d in self.dimensions},
            "tag_scores": {
                d.name: {label: round(s, 4) for label, s in d.scores[:PAYLOAD_TOP]}
                for d in self.dimensions
            },
            "taxonomy_version": self.version,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the API and CLI."""
        return {
            "taxonomy_version": self.version,
            "ocr_text": self.ocr_text,
            "dimensions": [d.as_dict() for d in self.dimensions],
        }


class TextReader(Protocol):
    """Reads text in an image (OCR); returns (text, confidence) pairs."""

    def read(self, image: Image.Image) -> list[tuple[str, float]]: ...


def _scores(names: Sequence[str], probs: np.ndarray) -> list[tuple[str, float]]:
    order = np.argsort(-probs, kind="stable")
    return [(names[j], float(probs[j])) for j in order]


def _assign(dim: DimensionVectors, dim_threshold: float | None, probs: np.ndarray) -> DimensionTags:
    default = MULTI_LABEL_THRESHOLD if dim.multi_label else None
    limits = [t if t is not None else dim_threshold for t in dim.thresholds]
    limits = [t if t is not None else default for t in limits]
    if dim.multi_label:
        assigned = [
            name
            for name, p, t in sorted(
                zip(dim.labels, probs, limits, strict=True), key=lambda x: -x[1]
            )
            if t is not None and p >= t
        ]
    else:
        best = int(np.argmax(probs))
        t = limits[best]
        assigned = [dim.labels[best]] if t is None or probs[best] >= t else []
    return DimensionTags(dim.name, dim.multi_label, _scores(dim.labels, probs), assigned)


def score_vectors(
    encoder: Encoder,
    vectors: np.ndarray,
    label_set: LabelSet,
    texts: Sequence[str | None] | None = None,
) -> list[TagResult]:
    """Tag each image vector with every dimension of ``label_set``.

    ``texts`` (OCR output per image) are fused as the module docstring says when the
    taxonomy enables OCR fusion.
    """
    vectors = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    n = len(vectors)
    fusion = label_set.taxonomy.ocr
    text_vecs: list[np.ndarray | None] = [None] * n
    if fusion.enabled and texts is not None and any(texts):
        found = [i for i, t in enumerate(texts) if t]
        encoded = encoder.encode_texts([texts[i] or "" for i in found])
        for i, v in zip(found, encoded, strict=True):
            text_vecs[i] = v
    family = encoder.family
    scale, bias = encoder.logit_scale, encoder.logit_bias
    per_image: list[list[DimensionTags]] = [[] for _ in range(n)]
    for dim in label_set.dimensions:
        cos = vectors.astype(np.float64) @ dim.vectors.T.astype(np.float64)
        for i, tv in enumerate(text_vecs):
            if tv is None:
                continue
            tcos = dim.vectors.astype(np.float64) @ tv.astype(np.float64)
            cos[i] += fusion.weight * (tcos - tcos.mean())
        centroid_cos = cos.mean(axis=1)  # the average label's logit (module docstring)
        probs = label_probabilities(cos, family, scale, bias, dim.multi_label, centroid_cos)
        spec = label_set.taxonomy.dimension(dim.name)
        for i in range(n):
            per_image[i].append(_assign(dim, spec.threshold, probs[i]))
    return [
        TagResult(dims, label_set.version, texts[i] if texts is not None else None)
        for i, dims in enumerate(per_image)
    ]


class Tagger:
    """Scores image vectors against the current taxonomy, or against ad-hoc labels."""

    def __init__(
        self,
        encoder: Encoder,
        labels: LabelBank,
        reader: TextReader | None = None,
        limits: ImageLimits | None = None,
    ) -> None:
        self.encoder = encoder
        self.labels = labels
        self.reader = reader
        self.limits = limits or ImageLimits()

    def read_texts(self, originals: Sequence[bytes], min_confidence: float) -> list[str | None]:
        """OCR each original (full resolution): the confident text, lower-cased, or None."""
        if self.reader is None:
            return [None] * len(originals)
        out: list[str | None] = []
        for data in originals:
            image = decode_image(data, self.limits).image
            words = [t for t, conf in self.reader.read(image) if conf >= min_confidence]
            text = " ".join(w.strip() for w in words if w.strip()).lower()
            out.append(text or None)
        return out

    def score(
        self,
        vectors: np.ndarray,
        label_set: LabelSet,
        texts: Sequence[str | None] | None = None,
    ) -> list[TagResult]:
        """Tag image vectors with ``label_set`` (see ``score_vectors``)."""
        return score_vectors(self.encoder, vectors, label_set, texts)

    def tag(
        self, vectors: np.ndarray, originals: Sequence[bytes] | None = None
    ) -> list[TagResult] | None:
        """Tags against the current taxonomy; None when no taxonomy is loaded.

        ``originals`` (the image bytes) are read by OCR only when the taxonomy enables it.
        """
        label_set = self.labels.current()
        if label_set is None:
            return None
        texts = None
        fusion = label_set.taxonomy.ocr
        if fusion.enabled and originals is not None:
            texts = self.read_texts(originals, fusion.min_confidence)
        return self.score(vectors, label_set, texts)

    def tag_one(
        self,
        vector: np.ndarray,
        original: bytes | None,
        candidate_labels: Sequence[str] | None = None,
        hypothesis_template: str = "This is a photo of {}.",
        multi_label: bool = False,
    ) -> TagResult:
        """One image against ad-hoc labels, or else the stored taxonomy.

        Raises:
            NoTaxonomy: no candidate labels and no taxonomy loaded.
        """
        vectors = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if candidate_labels:
            return self.adhoc(vectors, candidate_labels, hypothesis_template, multi_label)[0]
        results = self.tag(vectors, [original] if original is not None else None)
        if results is None:
            raise NoTaxonomy(
                "no taxonomy is loaded: load one (PUT /api/v1/taxonomy, `sightline taxonomy "
                "load`) or pass candidate_labels"
            )
        return results[0]

    def tag_bytes(self, data: bytes, **options: Any) -> TagResult:
        """Decode, embed and tag an image that is not stored.

        Raises:
            InvalidImage: refused like any upload.
        """
        decoded = decode_image(data, self.limits, min_side=self.encoder.input_size)
        vector = self.encoder.encode_images([decoded.image])[0]
        return self.tag_one(vector, data, **options)

    def adhoc(
        self,
        vectors: np.ndarray,
        candidate_labels: Sequence[str],
        hypothesis_template: str = "This is a photo of {}.",
        multi_label: bool = False,
    ) -> list[TagResult]:
        """Score against labels given with the request, as Hugging Face's zero-shot image
        classification pipeline takes them (one prompt per label from the template)."""
        names = list(dict.fromkeys(c.strip() for c in candidate_labels if c.strip()))
        if len(names) < (1 if multi_label else 2):
            raise InvalidQuery("give at least two distinct candidate labels (one if multi-label)")
        template = hypothesis_template.replace("{label}", "{}")
        if "{}" not in template:
            raise InvalidQuery("hypothesis_template must contain {} where the label goes")
        label_vectors = self.encoder.encode_texts([template.replace("{}", n) for n in names])
        dim = DimensionVectors("labels", multi_label, names, label_vectors, [None] * len(names))
        family = self.encoder.family
        cos = np.asarray(vectors, dtype=np.float64) @ label_vectors.T.astype(np.float64)
        centroid_cos = cos.mean(axis=1)
        probs = label_probabilities(
            cos,
            family,
            self.encoder.logit_scale,
            self.encoder.logit_bias,
            multi_label,
            centroid_cos,
        )
        return [TagResult([_assign(dim, None, p)]) for p in probs]
