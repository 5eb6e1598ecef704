"""Zero-shot tagging: label vectors, CLIP/SigLIP scoring, auto-tag on ingest, re-tag."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from demo.tiny_model import build_tiny_siglip
from services.encoder import Encoder, ModelFamily
from services.errors import InvalidTaxonomy
from services.filters import parse_filters
from services.ids import point_id
from services.index.base import VectorIndex
from services.ingest.intake import IngestItem
from services.jobs.store import SCAN_ITEM, MemoryJobStore, State
from services.runtime import Runtime, build_runtime
from services.settings import Settings
from services.tagging.labels import label_point_id
from services.tagging.retag import retag
from services.tagging.scoring import label_probabilities
from services.tagging.taxonomy import parse_taxonomy
from tests.conftest import ADMIN, make_index, png_bytes, set_taxonomy

TAXONOMY = """
templates: ["a photo of a {label}", "a product photo of a {label}"]
dimensions:
  - name: colour
    labels: [red, green, blue]
  - name: style
    multi_label: true
    threshold: 0.4
    labels:
      - name: summer
        prompts: ["a light summer outfit", "clothes for hot weather"]
      - name: formal
        threshold: 0.9
  - name: pattern
    templates: ["a {label} pattern"]
    labels: [striped, dotted]
"""


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def expected_label_vector(encoder: Encoder, prompts: list[str]) -> np.ndarray:
    """Independent: embed each prompt alone, average in float64, normalise."""
    rows = np.stack([encoder.encode_texts([p])[0] for p in prompts]).astype(np.float64)
    return unit(rows.mean(axis=0))


def test_stored_label_vectors_are_normalised_prompt_means(
    runtime: Runtime, encoder: Encoder
) -> None:
    taxonomy = parse_taxonomy(TAXONOMY)
    version = runtime.tagging.replace(ADMIN, taxonomy, retag=False)[0]
    expected = {
        ("colour", "red"): ["a photo of a red", "a product photo of a red"],
        ("style", "summer"): ["a light summer outfit", "clothes for hot weather"],
        ("style", "formal"): ["a photo of a formal", "a product photo of a formal"],
        ("pattern", "dotted"): ["a dotted pattern"],
    }
    for (dim, label), prompts in expected.items():
        [record] = runtime.index.retrieve(
            runtime.collections.labels, [label_point_id(version, dim, label)], with_vectors=True
        )
        assert record.payload["prompts"] == prompts
        assert record.payload["version"] == version
        np.testing.assert_allclose(
            record.vector, expected_label_vector(encoder, prompts), atol=1e-5
        )
    # 3 + 2 + 2 labels, nothing else in the collection.
    assert runtime.index.count(runtime.collections.labels) == 7


def test_replacing_the_taxonomy_removes_old_label_vectors(runtime: Runtime) -> None:
    set_taxonomy(runtime, parse_taxonomy(TAXONOMY))
    v2 = set_taxonomy(
        runtime, parse_taxonomy("dimensions: [{name: colour, labels: [black, white]}]")
    )
    records, _ = runtime.index.scroll(runtime.collections.labels, limit=100)
    assert {r.payload["version"] for r in records} == {v2}
    assert sorted(r.payload["label"] for r in records) == ["black", "white"]


def test_clip_single_label_is_a_softmax_that_sums_to_one(
    runtime: Runtime, encoder: Encoder
) -> None:
    set_taxonomy(runtime, parse_taxonomy(TAXONOMY))
    runtime.ingestor.ingest(ADMIN, [IngestItem(png_bytes(i), f"{i}.png") for i in range(4)])
    labels = runtime.tagging.labels.current()
    assert labels is not None
    colour = next(d for d in labels.dimensions if d.name == "colour")
    scale = encoder.logit_scale
    for i in range(4):
        record = runtime.search.record(ADMIN, point_id_of(runtime, i), with_vector=True)
        cos = unit(np.asarray(colour.vectors, dtype=np.float64)) @ np.asarray(record.vector)
        z = np.exp(scale * cos - (scale * cos).max())
        probs = dict(zip(colour.labels, z / z.sum(), strict=True))
        [result] = runtime.tagging.tagger.score(record.vector[None, :], labels)
        got = dict(result.dimensions[0].scores)
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-6)
        for name, p in probs.items():
            assert got[name] == pytest.approx(p, abs=1e-5)
        # Best label assigned, and written to the payload at ingest.
        assert record.payload["tags"]["colour"] == [max(probs, key=lambda k: probs[k])]
        assert record.payload["taxonomy_version"] == labels.version


def point_id_of(runtime: Runtime, seed: int) -> str:
    from services.ids import sha256_hex

    return point_id(sha256_hex(png_bytes(seed)))


def test_multi_label_uses_per_label_probabilities_and_thresholds(
    runtime: Runtime, encoder: Encoder
) -> None:
    labels = runtime.tagging.labels.replace(parse_taxonomy(TAXONOMY))
    style = next(d for d in labels.dimensions if d.name == "style")
    vectors = encoder.encode_images([_image(i) for i in range(6)])
    results = runtime.tagging.tagger.score(vectors, labels)
    for v, result in zip(vectors, results, strict=True):
        dim = next(d for d in result.dimensions if d.name == "style")
        cos = style.vectors.astype(np.float64) @ v
        # Each label against the dimension's average label: the mean of the cosines.
        want = 1 / (1 + np.exp(-encoder.logit_scale * (cos - cos.mean())))
        got = dict(dim.scores)
        for name, p in zip(style.labels, want, strict=True):
            assert got[name] == pytest.approx(p, abs=1e-5)
        limits = {"summer": 0.4, "formal": 0.9}  # dimension threshold, label override
        assert sorted(dim.assigned) == sorted(n for n, p in got.items() if p >= limits[n])


def _image(seed: int):  # type: ignore[no-untyped-def]
    import io

    from PIL import Image

    return Image.open(io.BytesIO(png_bytes(seed))).convert("RGB")


def test_siglip_scores_with_sigmoid_scale_and_bias(tmp_path: Path) -> None:
    model = build_tiny_siglip(tmp_path / "siglip", logit_scale=12.0, logit_bias=-3.5)
    settings = Settings(data_dir=tmp_path / "data", model=str(model), batch_size=4)
    runtime = build_runtime(settings, index=make_index("embedded", tmp_path))
    runtime.open()
    try:
        encoder = runtime.encoder
        assert encoder.family is ModelFamily.SIGLIP
        assert encoder.logit_scale == pytest.approx(12.0, rel=1e-5)
        assert encoder.logit_bias == pytest.approx(-3.5)
        labels = runtime.tagging.labels.replace(parse_taxonomy(TAXONOMY))
        vectors = encoder.encode_images([_image(i) for i in range(3)])
        for v, result in zip(vectors, runtime.tagging.tagger.score(vectors, labels), strict=True):
            for dim, dv in zip(result.dimensions, labels.dimensions, strict=True):
                cos = dv.vectors.astype(np.float64) @ v
                want = 1 / (1 + np.exp(-(12.0 * cos - 3.5)))
                got = dict(dim.scores)
                for name, p in zip(dv.labels, want, strict=True):
                    assert got[name] == pytest.approx(p, rel=1e-4)
    finally:
        runtime.close()


def test_probability_functions_against_formulas() -> None:
    cos = np.array([[0.3, 0.1, -0.2]])
    clip = label_probabilities(cos, ModelFamily.CLIP, 100.0, None, multi_label=False)
    assert clip.sum() == pytest.approx(1.0)
    assert clip[0, 0] == pytest.approx(1 / (1 + np.exp(-20) + np.exp(-50)))
    sig = label_probabilities(cos, ModelFamily.SIGLIP, 10.0, -2.0, multi_label=False)
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-(10 * cos - 2))))
    assert sig.sum() != pytest.approx(1.0)


def test_tag_filters_and_retag_after_a_taxonomy_change(runtime: Runtime) -> None:
    set_taxonomy(runtime, parse_taxonomy(TAXONOMY))
    runtime.ingestor.ingest(ADMIN, [IngestItem(png_bytes(i), f"{i}.png") for i in range(8)])
    records, _ = runtime.index.scroll(runtime.collections.images, limit=100)
    by_colour: dict[str, set[str]] = {}
    for r in records:
        by_colour.setdefault(r.payload["tags"]["colour"][0], set()).add(r.id)
    for colour, ids in by_colour.items():
        flt = parse_filters([f"tags.colour={colour}"])
        assert runtime.index.count(runtime.collections.images, flt) == len(ids)
        hits = runtime.search.text(ADMIN, "a photo", 10, flt)
        assert {h.payload["image_id"] for h in hits} == {
            runtime.search.record(ADMIN, i).payload["image_id"] for i in ids
        }

    new = set_taxonomy(
        runtime, parse_taxonomy("dimensions: [{name: shade, labels: [dark, light]}]")
    )
    jobs = MemoryJobStore()
    job = jobs.create("retag", [SCAN_ITEM])
    n = retag(
        index=runtime.index,
        collection=runtime.collections.images,
        store=runtime.store,
        tagger=runtime.tagging.tagger,
        jobs=jobs,
        job_id=job,
    )
    assert n == 8
    status = jobs.get(job)
    assert status.state is State.DONE and status.total == 9
    records, _ = runtime.index.scroll(runtime.collections.images, limit=100)
    assert {r.payload["taxonomy_version"] for r in records} == {new}
    assert all(set(r.payload["tags"]) == {"shade"} for r in records)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("dimensions: [{name: colour, labels: [red]}]", "at least two labels"),
        ("dimensions: [{name: Colour!, labels: [a, b]}]", "dimensions.0.name"),
        ("dimensions: [{name: c, labels: [a, a]}]", "repeats a label"),
        ("dimensions: [{name: c, labels: [a, b], colour: 1}]", "Extra inputs"),
        ("dimensions: [{name: c, labels: [a, b], threshold: 2}]", "threshold"),
        ("[1, 2", "not valid YAML"),
        ("- just a list", "must be a mapping"),
    ],
)
def test_invalid_taxonomies_are_refused_with_the_reason(doc: str, message: str) -> None:
    with pytest.raises(InvalidTaxonomy, match=message):
        parse_taxonomy(doc)


def test_export_round_trips(index: VectorIndex) -> None:
    taxonomy = parse_taxonomy(TAXONOMY)
    again = parse_taxonomy(taxonomy.to_yaml())
    assert again == taxonomy and again.version == taxonomy.version
