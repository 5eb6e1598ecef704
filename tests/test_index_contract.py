"""One contract, run against every index adapter; rankings checked by brute force."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from services.encoder import ModelIdentity
from services.errors import ModelMismatch
from services.index.base import PayloadFilter, PointData, Range, VectorIndex, VectorStorage
from services.index.edge import EdgeIndex
from tests.brute import clustered, recommend_sum, top_k, top_k_grouped
from tests.conftest import make_index

DIM = 16
N = 300
IDENTITY = ModelIdentity("test-model", DIM)
COLOURS = ["red", "blue", "green", "black"]


def _ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


@pytest.fixture
def filled(index: VectorIndex) -> tuple[VectorIndex, list[str], np.ndarray, list[dict]]:
    index.ensure_collection("images", IDENTITY)
    ids = _ids(N)
    vectors = clustered(N, DIM, clusters=6, seed=42)
    payloads = [
        {
            "colour": COLOURS[i % 4],
            "price": float(i % 50),
            "year": 2000 + i % 7,
            "product_id": f"p{i // 5}" if i % 11 else None,
            "flag": "yes" if i % 3 == 0 else "no",
            "in_stock": i % 4 != 1,
            "sizes": ["s", "m"] if i % 2 else ["l"],
            "extra": {"gift": i % 5 == 0},
        }
        for i in range(N)
    ]
    for p in payloads:
        if p["product_id"] is None:
            del p["product_id"]
    points = [PointData(i, v, p) for i, v, p in zip(ids, vectors, payloads, strict=True)]
    for start in range(0, N, 64):
        index.upsert("images", points[start : start + 64])
    return index, ids, vectors, payloads


def _pairs(hits):  # type: ignore[no-untyped-def]
    return [(h.id, h.score) for h in hits]


def _assert_same_ranking(got, want) -> None:  # type: ignore[no-untyped-def]
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-5)


def test_count_retrieve_scroll(filled) -> None:  # type: ignore[no-untyped-def]
    index, ids, vectors, payloads = filled
    assert index.count("images") == N
    records = index.retrieve("images", [ids[3], ids[7], str(uuid.uuid4())], with_vectors=True)
    by_id = {r.id: r for r in records}
    assert set(by_id) == {ids[3], ids[7]}
    assert by_id[ids[7]].payload == payloads[7]
    np.testing.assert_allclose(by_id[ids[3]].vector, vectors[3], atol=1e-6)
    seen: list[str] = []
    offset = None
    while True:
        page, offset = index.scroll("images", limit=70, offset=offset)
        assert len(page) <= 70
        seen.extend(r.id for r in page)
        if offset is None:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))


def test_search_matches_brute_force(filled) -> None:  # type: ignore[no-untyped-def]
    index, ids, vectors, _ = filled
    rng = np.random.default_rng(7)
    for _ in range(5):
        query = rng.normal(size=DIM).astype(np.float32)
        _assert_same_ranking(
            _pairs(index.search("images", query, 10)), top_k(query, ids, vectors, 10)
        )
        # A query's own beam (text queries get a wider one) ranks the same.
        _assert_same_ranking(
            _pairs(index.search("images", query, 10, ef=1024)), top_k(query, ids, vectors, 10)
        )


def test_filters_match_brute_force(filled) -> None:  # type: ignore[no-untyped-def]
    index, ids, vectors, payloads = filled
    query = vectors[0] + vectors[100]
    flt = PayloadFilter(
        equals={"flag": "no"},
        any_of={"colour": ["red", "green"]},
        ranges={"price": Range(gte=5, lt=40)},
        not_equals={"year": 2003},
        exclude_ids=frozenset({ids[0]}),
    )

    def keep(i: int) -> bool:
        p = payloads[i]
        return (
            p["flag"] == "no"
            and p["colour"] in ("red", "green")
            and 5 <= p["price"] < 40
            and p["year"] != 2003
            and ids[i] != ids[0]
        )

    want = top_k(query, ids, vectors, 15, keep)
    _assert_same_ranking(_pairs(index.search("images", query, 15, flt)), want)
    assert index.count("images", flt) == sum(keep(i) for i in range(N))


def test_booleans_and_mixed_alternatives_match_brute_force(filled) -> None:  # type: ignore[no-untyped-def]
    """Booleans read back as booleans and match as booleans (never as 1, 0 or "true"),
    nested and in any-of lists mixing types: the same on every adapter."""
    index, ids, vectors, payloads = filled
    records = index.retrieve("images", [ids[0], ids[1]])
    by_id = {r.id: r.payload for r in records}
    assert by_id[ids[0]]["in_stock"] is True and by_id[ids[1]]["in_stock"] is False
    assert by_id[ids[0]]["extra"] == {"gift": True}
    query = vectors[3]
    cases = [
        (PayloadFilter(equals={"in_stock": True}), lambda p: p["in_stock"] is True),
        (PayloadFilter(equals={"in_stock": False}), lambda p: p["in_stock"] is False),
        (PayloadFilter(not_equals={"in_stock": True}), lambda p: p["in_stock"] is not True),
        (PayloadFilter(equals={"extra.gift": True}), lambda p: p["extra"]["gift"] is True),
        (
            PayloadFilter(any_of={"year": [2001, "x", True]}),
            lambda p: p["year"] == 2001,
        ),
        (
            PayloadFilter(any_of={"in_stock": [False]}, equals={"colour": "blue"}),
            lambda p: p["in_stock"] is False and p["colour"] == "blue",
        ),
        (PayloadFilter(equals={"in_stock": 1}), lambda p: False),  # 1 is not true
        (PayloadFilter(equals={"in_stock": "true"}), lambda p: False),  # nor is "true"
    ]
    for flt, keep in cases:
        want = top_k(query, ids, vectors, 12, lambda i, keep=keep: keep(payloads[i]))
        _assert_same_ranking(_pairs(index.search("images", query, 12, flt)), want)
        assert index.count("images", flt) == sum(keep(p) for p in payloads), flt
    index.set_payload("images", [ids[1]], {"in_stock": True})
    assert index.retrieve("images", [ids[1]])[0].payload["in_stock"] is True
    assert (
        index.count("images", PayloadFilter(equals={"in_stock": False}))
        == sum(p["in_stock"] is False for p in payloads) - 1
    )


def test_group_by_matches_brute_force(filled) -> None:  # type: ignore[no-untyped-def]
    index, ids, vectors, payloads = filled
    query = vectors[12]
    groups = [p.get("product_id") for p in payloads]
    want = top_k_grouped(query, ids, vectors, groups, 8)
    got = index.search("images", query, 8, group_by="product_id")
    _assert_same_ranking(_pairs(got), want)
    assert len({h.payload["product_id"] for h in got}) == 8


def test_recommend_matches_brute_force(filled) -> None:  # type: ignore[no-untyped-def]
    index, ids, vectors, _ = filled
    pos, neg = [vectors[1], vectors[2]], [vectors[3]]
    excluded = {ids[1], ids[2], ids[3]}
    got = index.recommend("images", pos, neg, 10, PayloadFilter(exclude_ids=frozenset(excluded)))
    want = recommend_sum(np.array(pos), np.array(neg), ids, vectors, 10, excluded)
    _assert_same_ranking(_pairs(got), want)


def test_upsert_same_id_overwrites_and_set_payload_merges(filled) -> None:  # type: ignore[no-untyped-def]
    index, ids, vectors, _payloads = filled
    index.upsert("images", [PointData(ids[5], vectors[9], {"colour": "white"})])
    assert index.count("images") == N
    (record,) = index.retrieve("images", [ids[5]], with_vectors=True)
    assert record.payload == {"colour": "white"}
    np.testing.assert_allclose(record.vector, vectors[9], atol=1e-6)
    index.set_payload("images", [ids[5]], {"title": "shirt"})
    (record,) = index.retrieve("images", [ids[5]])
    assert record.payload == {"colour": "white", "title": "shirt"}


def test_delete(filled) -> None:  # type: ignore[no-untyped-def]
    index, ids, vectors, _ = filled
    index.delete("images", [*ids[:10], str(uuid.uuid4())])
    assert index.count("images") == N - 10
    assert index.retrieve("images", ids[:10]) == []
    hits = index.search("images", vectors[0], 20)
    assert not {h.id for h in hits} & set(ids[:10])


def test_model_identity_is_enforced(index: VectorIndex) -> None:
    index.ensure_collection("images", IDENTITY)
    index.ensure_collection("images", IDENTITY)  # same model: fine, idempotent
    assert index.collection_identity("images") == IDENTITY
    assert index.collection_identity("nothing") is None
    with pytest.raises(ModelMismatch, match="test-model"):
        index.ensure_collection("images", ModelIdentity("another-model", DIM))
    with pytest.raises(ModelMismatch, match="16-d"):
        index.ensure_collection("images", ModelIdentity("test-model", 32))
    # The same model with int8 weights makes other vectors: refused, and the runtime named.
    with pytest.raises(ModelMismatch, match="SIGHTLINE_RUNTIME=torch or onnx as it was built"):
        index.ensure_collection("images", ModelIdentity("test-model#int8", DIM))
    assert "images" in index.list_collections()


def test_data_survives_reopen(index_kind: str, tmp_path: Path) -> None:
    first = make_index(index_kind, tmp_path)
    first.ensure_collection("images", IDENTITY)
    vectors = clustered(20, DIM, 2, seed=1)
    first.upsert(
        "images",
        [PointData(i, v, {"n": n}) for n, (i, v) in enumerate(zip(_ids(20), vectors, strict=True))],
    )
    first.close()
    second = make_index(index_kind, tmp_path)
    try:
        second.ensure_collection("images", IDENTITY)
        assert second.count("images") == 20
        with pytest.raises(ModelMismatch):
            second.ensure_collection("images", ModelIdentity("other", DIM))
    finally:
        second.close()


def test_adapters_agree(tmp_path: Path) -> None:
    """Both adapters give the same answers to the same queries on the same data."""
    vectors = clustered(150, DIM, 5, seed=3)
    ids = _ids(150)
    results = []
    for kind in ("embedded", "server"):
        idx = make_index(kind, tmp_path / kind)
        idx.ensure_collection("images", IDENTITY)
        idx.upsert(
            "images",
            [
                PointData(i, v, {"g": n % 9})
                for n, (i, v) in enumerate(zip(ids, vectors, strict=True))
            ],
        )
        results.append(
            (
                _pairs(idx.search("images", vectors[4], 12)),
                _pairs(idx.search("images", vectors[4], 5, group_by="g")),
                _pairs(idx.recommend("images", [vectors[1]], [vectors[2]], 7)),
            )
        )
        idx.close()
    for a, b in zip(results[0], results[1], strict=True):
        _assert_same_ranking(a, b)


def test_int8_quantized_collections_rank_like_brute_force(index_kind: str, tmp_path: Path) -> None:
    """Scalar int8 quantization with originals on disk: once indexed, the HNSW walk uses
    int8 copies and the candidates are rescored with the originals, so results and scores
    are float32's (checked against an exact scan). 6,000 x 512-d is past Qdrant's indexing
    threshold (10 MB), so the embedded engine really builds the quantized HNSW segment."""
    n, dim = 6000, 512
    index = make_index(index_kind, tmp_path, VectorStorage("int8", on_disk=True, oversampling=3))
    index.ensure_collection("images", ModelIdentity("test-model", dim))
    ids = _ids(n)
    vectors = clustered(n, dim, clusters=12, seed=7)
    for start in range(0, n, 1000):
        index.upsert(
            "images",
            [PointData(ids[i], vectors[i], {}) for i in range(start, min(n, start + 1000))],
        )
    if isinstance(index, EdgeIndex):
        index.optimize("images")
        segments = [
            json.loads(f.read_text())["config"]["vector_data"][""]
            for f in (tmp_path / "edge" / "images").rglob("segment.json")
        ]
        indexed = [seg for seg in segments if seg["index"]["type"] == "hnsw"]
        assert indexed and all(
            seg["quantization_config"]
            == {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}
            for seg in indexed
        ), segments
    rng = np.random.default_rng(3)
    found = 0
    for q in rng.integers(0, n, 25):
        query = vectors[q] + rng.normal(0, 0.02, dim).astype(np.float32)
        query /= np.linalg.norm(query)
        exact = vectors @ query
        hits = index.search("images", query, 10)
        found += len({h.id for h in hits} & {ids[i] for i in np.argsort(-exact)[:10]})
        for h in hits:  # rescored: the originals' cosine, not the int8 estimate
            assert abs(h.score - float(exact[ids.index(h.id)])) < 1e-4
    assert found / 250 >= 0.95
    index.close()


def test_an_embedded_shard_from_before_boolean_encoding_is_upgraded_once(
    tmp_path: Path,
) -> None:
    """Booleans written as plain booleans (the binding's own way, before this adapter
    encoded them) could never be matched; the first open rewrites them, once."""
    import qdrant_edge as qe

    index = EdgeIndex(tmp_path / "edge")
    index.ensure_collection("images", IDENTITY)
    ids = _ids(3)
    vectors = clustered(3, DIM, clusters=1, seed=1)
    shard = index._open("images")
    shard.update(
        qe.UpdateOperation.upsert_points(
            [
                qe.Point(uuid.UUID(i), v.tolist(), {"in_stock": n != 1, "n": n})
                for n, (i, v) in enumerate(zip(ids, vectors, strict=True))
            ]
        )
    )
    shard.flush()
    index.close()
    meta_path = tmp_path / "edge" / "images" / "sightline.json"
    meta = json.loads(meta_path.read_text())
    del meta["payload_format"]  # as an older Sightline wrote it
    meta_path.write_text(json.dumps(meta))

    reopened = EdgeIndex(tmp_path / "edge")
    assert reopened.count("images", PayloadFilter(equals={"in_stock": True})) == 2
    assert reopened.count("images", PayloadFilter(equals={"in_stock": False})) == 1
    by_n = {r.payload["n"]: r.payload for r in reopened.scroll("images")[0]}
    assert by_n[0]["in_stock"] is True and by_n[1]["in_stock"] is False
    assert json.loads(meta_path.read_text())["payload_format"] == 2
    reopened.close()
