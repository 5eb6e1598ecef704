"""Ingest and search through the real encoder and both index adapters, checked by brute force."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sentence_transformers import SentenceTransformer

from services.errors import InvalidImage, NotFound
from services.filters import parse_filters
from services.images import decode_image
from services.ingest.indexer import Outcome
from services.ingest.intake import IngestItem
from services.runtime import Runtime
from tests.brute import recommend_sum, top_k, top_k_grouped
from tests.conftest import ADMIN, jpeg_bytes, png_bytes

N = 24


@pytest.fixture(scope="module")
def reference_model(tiny_model_dir) -> SentenceTransformer:  # type: ignore[no-untyped-def]
    """The same weights loaded directly, independent of Sightline's Encoder."""
    return SentenceTransformer(str(tiny_model_dir), device="cpu")


def _catalog() -> list[IngestItem]:
    return [
        IngestItem(
            data=png_bytes(i) if i % 2 else jpeg_bytes(i, quality=95),
            filename=f"img{i}.png",
            metadata={
                "title": f"item {i}",
                "price": i * 2.5,
                "product_id": f"p{i // 3}",
                "colour": ["red", "blue", "green"][i % 3],
            },
        )
        for i in range(N)
    ]


def _reference_vectors(reference_model, items):  # type: ignore[no-untyped-def]
    images = [decode_image(it.data, _limits()).image for it in items]
    return np.asarray(reference_model.encode(images, normalize_embeddings=True))


def _limits():  # type: ignore[no-untyped-def]
    from services.settings import ImageLimits

    return ImageLimits()


@pytest.fixture
def indexed(runtime: Runtime, reference_model):  # type: ignore[no-untyped-def]
    items = _catalog()
    report = runtime.ingestor.ingest(ADMIN, items)
    assert report.count(Outcome.INDEXED) == N
    ids = [r.image_id for r in report.results]
    return runtime, items, ids, _reference_vectors(reference_model, items)


def test_reingest_is_idempotent(indexed) -> None:  # type: ignore[no-untyped-def]
    runtime, items, ids, _ = indexed
    report = runtime.ingestor.ingest(ADMIN, items)
    assert report.summary() == {"indexed": 0, "updated": 0, "skipped": N, "failed": 0}
    assert runtime.index.count(runtime.collections.images) == N
    stored = list(runtime.store.ids())
    assert sorted(stored) == sorted(ids)


def test_reingest_with_new_metadata_updates_payload(indexed) -> None:  # type: ignore[no-untyped-def]
    runtime, items, ids, _ = indexed
    changed = IngestItem(
        items[0].data, items[0].filename, {**items[0].metadata, "title": "renamed"}
    )
    report = runtime.ingestor.ingest(ADMIN, [changed])
    assert [r.outcome for r in report.results] == [Outcome.UPDATED]
    assert runtime.index.count(runtime.collections.images) == N
    hit = runtime.search.similar(ADMIN, ids[1], k=N - 1)
    titles = {h.payload["title"] for h in hit}
    assert "renamed" in titles and "item 0" not in titles


def test_duplicates_within_a_batch_are_stored_once(runtime: Runtime) -> None:
    data = png_bytes(99)
    report = runtime.ingestor.ingest(ADMIN, [IngestItem(data, "a.png"), IngestItem(data, "b.png")])
    assert report.summary()["indexed"] == 1 and report.summary()["skipped"] == 1
    assert runtime.index.count(runtime.collections.images) == 1


def test_text_search_matches_brute_force(indexed, reference_model) -> None:  # type: ignore[no-untyped-def]
    runtime, _, ids, vectors = indexed
    for query in ["a red dress", "blue shoes", "x"]:
        q = reference_model.encode([query], normalize_embeddings=True)[0]
        want = top_k(q, ids, vectors, 7)
        got = runtime.search.text(ADMIN, query, k=7)
        assert [h.image_id for h in got] == [w[0] for w in want]
        np.testing.assert_allclose([h.score for h in got], [w[1] for w in want], atol=1e-4)


def test_text_search_with_filters_and_grouping(indexed, reference_model) -> None:  # type: ignore[no-untyped-def]
    runtime, items, ids, vectors = indexed
    q = reference_model.encode(["something"], normalize_embeddings=True)[0]
    flt = parse_filters(["colour=red|green", "price>=5", "price<50"])

    def keep(i: int) -> bool:
        m = items[i].metadata
        return m["colour"] in ("red", "green") and 5 <= m["price"] < 50

    got = runtime.search.text(ADMIN, "something", k=5, flt=flt)
    assert [h.image_id for h in got] == [w[0] for w in top_k(q, ids, vectors, 5, keep)]
    groups = [it.metadata["product_id"] for it in items]
    got = runtime.search.text(ADMIN, "something", k=4, group_by="product_id")
    assert [h.image_id for h in got] == [w[0] for w in top_k_grouped(q, ids, vectors, groups, 4)]


def test_similar_excludes_itself(indexed) -> None:  # type: ignore[no-untyped-def]
    runtime, _, ids, vectors = indexed
    for ref in (ids[3], runtime.search.record(ADMIN, ids[3]).id):  # sha256 or point id
        got = runtime.search.similar(ADMIN, ref, k=5)
        want = top_k(vectors[3], ids, vectors, 5, keep=lambda i: i != 3)
        assert [h.image_id for h in got] == [w[0] for w in want]
        assert ids[3] not in [h.image_id for h in got]


def test_search_by_uploaded_image(indexed, reference_model) -> None:  # type: ignore[no-untyped-def]
    runtime, items, ids, vectors = indexed
    # An indexed image used as the query is left out of its own results.
    got = runtime.search.by_image(ADMIN, items[5].data, k=4)
    assert [h.image_id for h in got] == [
        w[0] for w in top_k(vectors[5], ids, vectors, 4, lambda i: i != 5)
    ]
    fresh = png_bytes(1234)
    q = reference_model.encode([decode_image(fresh, _limits()).image], normalize_embeddings=True)[0]
    got = runtime.search.by_image(ADMIN, fresh, k=4)
    assert [h.image_id for h in got] == [w[0] for w in top_k(q, ids, vectors, 4)]
    with pytest.raises(InvalidImage):
        runtime.search.by_image(ADMIN, b"not an image", k=4)


def test_recommend_matches_brute_force(indexed) -> None:  # type: ignore[no-untyped-def]
    runtime, _, ids, vectors = indexed
    got = runtime.search.recommend(ADMIN, [ids[0], ids[1]], [ids[2]], k=6)
    want = recommend_sum(vectors[[0, 1]], vectors[[2]], ids, vectors, 6, {ids[0], ids[1], ids[2]})
    assert [h.image_id for h in got] == [w[0] for w in want]
    np.testing.assert_allclose([h.score for h in got], [w[1] for w in want], atol=1e-4)


def test_unknown_ids_are_not_found(indexed) -> None:  # type: ignore[no-untyped-def]
    runtime, *_ = indexed
    with pytest.raises(NotFound):
        runtime.search.similar(ADMIN, "0" * 64)
    with pytest.raises(NotFound):
        runtime.search.similar(ADMIN, "not-an-id")


def test_bad_inputs_store_nothing(runtime: Runtime) -> None:
    big = Image.new("1", (20000, 20000))
    import io

    buf = io.BytesIO()
    big.save(buf, format="PNG")
    good = jpeg_bytes(5, size=(300, 300))
    bad = [
        IngestItem(good[: len(good) // 2], "truncated.jpg"),
        IngestItem(b"hello, I am text", "text.jpg"),
        IngestItem(buf.getvalue(), "bomb.png"),
        IngestItem(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "vector.svg"),
        IngestItem(png_bytes(1), "meta.png", {"image_id": "x"}),
    ]
    report = runtime.ingestor.ingest(ADMIN, bad)
    assert report.summary()["failed"] == len(bad)
    assert all(r.reason for r in report.results)
    assert runtime.index.count(runtime.collections.images) == 0
    assert list(runtime.store.ids()) == []
    root = runtime.settings.images_path  # no file at all: no temporary left behind either
    assert not any(p.is_file() for p in root.rglob("*")) if root.exists() else True
