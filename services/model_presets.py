"""Well-known models Sightline runs, with what a person choosing one needs to know.

Vector sizes and languages are the models' own (their cards). Relative speed is the image
tower's compute per image against CLIP ViT-B/32 (GFLOPs at the model's input size), a
guide to order of magnitude, not a measurement on this machine; ``bench/ingest.py``
measures the one you pick.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    """One model choice: set ``SIGHTLINE_MODEL`` (and ``SIGHTLINE_TEXT_MODEL``) to it."""

    model: str
    family: str  # clip | siglip | siglip2 | jina-clip
    vector_size: int
    languages: str
    relative_speed: float  # image encodes per ViT-B/32 encode, from compute
    text_model: str | None = None
    trust_remote_code: bool = False
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


PRESETS: tuple[Preset, ...] = (
    Preset(
        "sentence-transformers/clip-ViT-B-32",
        "clip",
        512,
        "English",
        1.0,
        note="the default: fastest, good for catalogs",
    ),
    Preset(
        "sentence-transformers/clip-ViT-B-16",
        "clip",
        512,
        "English",
        0.25,
        note="finer detail than B/32 at 4x the compute",
    ),
    Preset(
        "sentence-transformers/clip-ViT-L-14",
        "clip",
        768,
        "English",
        0.05,
        note="the strongest sentence-transformers CLIP; wants a GPU for ingest",
    ),
    Preset(
        "sentence-transformers/clip-ViT-B-32",
        "clip",
        512,
        "50+ languages (text)",
        1.0,
        text_model="sentence-transformers/clip-ViT-B-32-multilingual-v1",
        note="the multilingual pair: images by B/32, queries and labels by a distilled "
        "multilingual text model in the same space",
    ),
    Preset(
        "google/siglip-base-patch16-224",
        "siglip",
        768,
        "English",
        0.2,
        note="sigmoid scores: calibrated per label, suits multi-label tagging",
    ),
    Preset(
        "google/siglip2-base-patch16-224",
        "siglip2",
        768,
        "multilingual",
        0.2,
        note="SigLIP 2: better retrieval and multilingual text than SigLIP",
    ),
    Preset(
        "jinaai/jina-clip-v2",
        "jina-clip",
        1024,
        "89 languages",
        0.02,
        trust_remote_code=True,
        note="needs SIGHTLINE_TRUST_REMOTE_CODE=true (it runs the model's own code)",
    ),
)
