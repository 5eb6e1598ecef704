"""Scores and embeddings against the reference implementation: transformers'
``zero-shot-image-classification`` pipeline and the model's own ``get_*_features``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

from demo.photos import real_photos
from demo.tiny_model import build_tiny_siglip, build_tiny_text_model
from services.encoder import Encoder, local_model_id
from services.errors import ModelMismatch, ModelUnavailable
from services.index.edge import EdgeIndex
from services.ingest.intake import IngestItem
from services.runtime import build_runtime
from services.settings import Settings
from services.tagging.labels import label_point_id
from services.tagging.scoring import label_probabilities
from services.tagging.taxonomy import parse_taxonomy
from tests.conftest import ADMIN, make_index, png_bytes
from tests.test_tagging import TAXONOMY

TEMPLATE = "This is a photo of {}."
LABELS = ["red", "a green dress", "blue striped shirt with long sleeves", "cat"]


def _images() -> list[Image.Image]:
    """Real photographs (scikit-image, scikit-learn) and one synthetic image."""
    import io

    photos = real_photos()
    chosen = [photos[name] for name in ("chelsea", "coffee", "astronaut", "china")]
    return [*chosen, Image.open(io.BytesIO(png_bytes(0))).convert("RGB")]


@pytest.fixture(params=["clip", "clip-hub-layout", "siglip"])
def model_dirs(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path: Path
) -> tuple[Path, Path]:
    """(what Sightline loads, what the reference loads): a tiny CLIP; the same in the hub
    layout of sentence-transformers/clip-ViT-B-32 (the production default: a legacy
    ``0_CLIPModel`` module); a tiny SigLIP."""
    if request.param == "clip":
        return tiny_model_dir, tiny_model_dir
    if request.param == "siglip":
        path = build_tiny_siglip(tmp_path / "siglip", logit_scale=12.0, logit_bias=-3.5)
        return path, path
    hub = tmp_path / "clip-ViT-B-32"
    shutil.copytree(tiny_model_dir, hub / "0_CLIPModel")
    module = {"idx": 0, "name": "0", "path": "0_CLIPModel"}
    module["type"] = "sentence_transformers.models.CLIPModel"
    (hub / "modules.json").write_text(json.dumps([module]))
    return hub, hub / "0_CLIPModel"


def test_tag_scores_equal_the_transformers_pipeline(model_dirs: tuple[Path, Path]) -> None:
    ours, theirs = model_dirs
    images = _images()
    classifier = pipeline("zero-shot-image-classification", model=str(theirs), device="cpu")
    reference = classifier(images, candidate_labels=LABELS, hypothesis_template=TEMPLATE)
    encoder = Encoder(str(ours), batch_size=4)
    texts = encoder.encode_texts([TEMPLATE.format(label) for label in LABELS])
    vectors = encoder.encode_images(images)
    got = label_probabilities(
        vectors.astype(np.float64) @ texts.T.astype(np.float64),
        encoder.family,
        encoder.logit_scale,
        encoder.logit_bias,
        multi_label=False,
    )
    for row, answer in zip(got, reference, strict=True):
        want = {item["label"]: item["score"] for item in answer}
        for label, p in zip(LABELS, row, strict=True):
            assert p == pytest.approx(want[label], abs=1e-4), label


def reference_features(
    theirs: Path, texts: list[str], images: list[Image.Image]
) -> tuple[np.ndarray, np.ndarray]:
    """Unit text and image vectors from the model's own ``get_*_features``, called the way
    the pipeline calls them: SigLIP texts padded to max_length (64)."""
    model = AutoModel.from_pretrained(str(theirs)).eval()
    processor = AutoProcessor.from_pretrained(str(theirs))
    padding: dict[str, object] = {"padding": True}
    if "siglip" in model.config.model_type:
        padding = {"padding": "max_length", "max_length": 64, "truncation": True}
    with torch.no_grad():
        text_inputs = processor.tokenizer(texts, return_tensors="pt", **padding)
        want_text = model.get_text_features(**text_inputs)
        image_inputs = processor.image_processor(images, return_tensors="pt")
        want_image = model.get_image_features(**image_inputs)
    want_text = getattr(want_text, "pooler_output", want_text)
    want_image = getattr(want_image, "pooler_output", want_image)
    return (
        torch.nn.functional.normalize(want_text, dim=-1).numpy(),
        torch.nn.functional.normalize(want_image, dim=-1).numpy(),
    )


def test_embeddings_equal_the_models_own_features(model_dirs: tuple[Path, Path]) -> None:
    ours, theirs = model_dirs
    images = _images()
    texts = [TEMPLATE.format(label) for label in LABELS]
    want_text, want_image = reference_features(theirs, texts, images)
    encoder = Encoder(str(ours), batch_size=4)
    assert np.allclose(encoder.encode_texts(texts), want_text, atol=1e-5)
    assert np.allclose(encoder.encode_images(images), want_image, atol=1e-5)


def test_siglip_taxonomy_without_templates_scores_like_the_pipeline(tmp_path: Path) -> None:
    """The production path (taxonomy -> label vectors -> tagger) with SigLIP's own default
    template, against the reference pipeline given that template."""
    model = build_tiny_siglip(tmp_path / "siglip", logit_scale=12.0, logit_bias=-3.5)
    runtime = build_runtime(
        Settings(data_dir=tmp_path / "data", model=str(model), batch_size=4),
        index=make_index("embedded", tmp_path),
    )
    runtime.open()
    try:
        names = ["red", "green dress", "cat"]
        doc = "dimensions:\n  - name: what\n    labels: [" + ", ".join(names) + "]\n"
        labels = runtime.tagging.labels.replace(parse_taxonomy(doc))
        assert labels.taxonomy.prompts(
            labels.taxonomy.dimensions[0], labels.taxonomy.dimensions[0].labels[0], "siglip"
        ) == ["This is a photo of red."]
        images = _images()
        classifier = pipeline("zero-shot-image-classification", model=str(model), device="cpu")
        reference = classifier(images, candidate_labels=names, hypothesis_template=TEMPLATE)
        vectors = runtime.encoder.encode_images(images)
        results = runtime.tagging.tagger.score(vectors, labels)
        for result, answer in zip(results, reference, strict=True):
            want = {item["label"]: item["score"] for item in answer}
            got = dict(result.dimensions[0].scores)
            for name in names:
                assert got[name] == pytest.approx(want[name], abs=1e-4), name
    finally:
        runtime.close()


# -- a multilingual text model mapped into the image model's space -------------------------


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_text_model(tmp_path_factory.mktemp("text") / "tiny-text", dim=16)


def test_text_model_embeds_queries_and_labels(
    tiny_model_dir: Path, text_model_dir: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    pair = Encoder(str(tiny_model_dir), batch_size=4, text_model=str(text_model_dir))
    alone = Encoder(str(tiny_model_dir), batch_size=4)
    texts = ["un chapeau rouge", "ein blaues kleid", "a green bag"]
    want = SentenceTransformer(str(text_model_dir)).encode(texts, normalize_embeddings=True)
    assert np.allclose(pair.encode_texts(texts), want, atol=1e-5)
    assert not np.allclose(pair.encode_texts(texts), alone.encode_texts(texts), atol=1e-3)
    images = _images()
    assert np.allclose(pair.encode_images(images), alone.encode_images(images), atol=1e-6)
    # The identity names both models, so an index built with the image model alone
    # refuses the pair (and the other way round).
    assert pair.identity.model_id == f"{alone.identity.model_id}+text:" + (
        local_model_id(text_model_dir.resolve())
    )
    index = EdgeIndex(tmp_path / "index")
    index.ensure_collection("images", alone.identity)
    with pytest.raises(ModelMismatch, match=r"\+text:"):
        index.ensure_collection("images", pair.identity)
    index.close()


def test_text_model_of_another_size_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = build_tiny_text_model(tmp_path / "wide", dim=24)
    encoder = Encoder(str(tiny_model_dir), text_model=str(other))
    with pytest.raises(ModelUnavailable, match=r"24-dimensional.*16"):
        encoder.load()


def test_text_model_search_and_tagging_through_the_runtime(
    tiny_model_dir: Path, text_model_dir: Path, tmp_path: Path
) -> None:
    """Label vectors and text search use the text model (checked by brute force)."""
    settings = Settings(
        data_dir=tmp_path / "data",
        model=str(tiny_model_dir),
        text_model=str(text_model_dir),
        batch_size=4,
    )
    runtime = build_runtime(settings, index=make_index("embedded", tmp_path))
    runtime.open()
    try:
        from sentence_transformers import SentenceTransformer

        text_model = SentenceTransformer(str(text_model_dir))
        version = runtime.tagging.replace(ADMIN, parse_taxonomy(TAXONOMY), retag=False)[0]
        prompts = ["a photo of a red", "a product photo of a red"]
        [record] = runtime.index.retrieve(
            runtime.collections.labels,
            [label_point_id(version, "colour", "red")],
            with_vectors=True,
        )
        assert record.payload["prompts"] == prompts
        mean = text_model.encode(prompts, normalize_embeddings=True).mean(axis=0)
        np.testing.assert_allclose(record.vector, mean / np.linalg.norm(mean), atol=1e-5)
        # Text search ranks by the text model's query vector (brute force over the index).
        runtime.ingestor.ingest(ADMIN, [IngestItem(png_bytes(s), f"{s}.png", {}) for s in range(6)])
        query = text_model.encode(["ein rotes kleid"], normalize_embeddings=True)[0]
        images = runtime.index.scroll(runtime.collections.images, limit=100, with_vectors=True)[0]
        want = sorted(images, key=lambda r: -float(np.dot(r.vector, query)))
        hits = runtime.search.text(ADMIN, "ein rotes kleid", k=6)
        assert [h.image_id for h in hits] == [r.payload["image_id"] for r in want]
    finally:
        runtime.close()


def test_models_lists_presets() -> None:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    presets = json.loads(result.output)
    by_model = {(p["model"], p["text_model"]) for p in presets}
    assert ("sentence-transformers/clip-ViT-L-14", None) in by_model
    assert (
        "sentence-transformers/clip-ViT-B-32",
        "sentence-transformers/clip-ViT-B-32-multilingual-v1",
    ) in by_model
    assert any(p["family"] == "siglip2" for p in presets)
    jina = next(p for p in presets if p["model"] == "jinaai/jina-clip-v2")
    assert jina["trust_remote_code"] is True
    for p in presets:
        assert p["vector_size"] > 0 and 0 < p["relative_speed"] <= 1.0 and p["languages"]
