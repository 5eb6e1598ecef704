"""The ingestion pipeline in-process: URLs (with SSRF guards), bulk folders, retries,
reconciliation, and the job stores' shared contract (memory and a real Redis)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient
from sentence_transformers import SentenceTransformer

from services.errors import FetchRefused, InvalidImage, NotFound
from services.ids import point_id
from services.images import decode_image
from services.index.server import ServerIndex
from services.ingest.fetch import fetch_image
from services.ingest.intake import IngestItem
from services.jobs.store import JobStore, MemoryJobStore, RedisJobStore, State
from services.runtime import Runtime, build_runtime
from services.settings import FetchSettings, Settings
from tests.conftest import ADMIN, jpeg_bytes, png_bytes
from tests.servers import RedisServer, free_port


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:
        status, headers, body = self.routes.get(self.path, (404, {}, b"missing"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.routes = {
        "/a.png": (200, {"Content-Type": "image/png"}, png_bytes(1)),
        "/b.jpg": (200, {"Content-Type": "image/jpeg"}, jpeg_bytes(2)),
        "/text": (200, {"Content-Type": "text/plain"}, b"hello"),
        "/big": (200, {}, b"\0" * 5000),
        "/to-a": (302, {"Location": "/a.png"}, b""),
        "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
    }
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


LOOPBACK_OK = FetchSettings(allow_networks=["127.0.0.0/8"], timeout_s=5)


def test_fetch_refuses_private_addresses_unless_allowed(http_server: str) -> None:
    with pytest.raises(FetchRefused, match="ALLOW_NETWORKS"):
        fetch_image(f"{http_server}/a.png", FetchSettings(), 10_000)
    data, final = fetch_image(f"{http_server}/to-a", LOOPBACK_OK, 10_000)
    assert data == png_bytes(1) and final.endswith("/a.png")


def test_fetch_checks_every_redirect_and_limits(http_server: str) -> None:
    with pytest.raises(FetchRefused, match=r"169\.254\.169\.254"):
        fetch_image(f"{http_server}/to-metadata", LOOPBACK_OK, 10_000)
    with pytest.raises(FetchRefused, match="redirects"):
        fetch_image(f"{http_server}/loop", LOOPBACK_OK, 10_000)
    with pytest.raises(FetchRefused, match="limit"):
        fetch_image(f"{http_server}/big", LOOPBACK_OK, 1000)
    with pytest.raises(FetchRefused, match="HTTP 404"):
        fetch_image(f"{http_server}/nothing", LOOPBACK_OK, 1000)
    for bad in ("file:///etc/passwd", "ftp://example.com/x.png", "http:///nohost"):
        with pytest.raises(FetchRefused, match="http and https"):
            fetch_image(bad, LOOPBACK_OK, 1000)


@pytest.fixture
def runtime(settings: Settings, encoder, index) -> Iterator[Runtime]:  # type: ignore[no-untyped-def]
    settings = settings.model_copy(
        update={
            "fetch": LOOPBACK_OK,
            "queue": settings.queue.model_copy(
                update={"batch_max_wait_s": 0.05, "retry_backoff_s": 0.01, "max_retries": 2}
            ),
        }
    )
    rt = build_runtime(settings, encoder=encoder, index=index)
    rt.open()
    yield rt
    rt.close()


def _settle(rt: Runtime) -> None:
    assert rt.wait_idle(timeout_s=60)


def test_url_job(runtime: Runtime, http_server: str) -> None:
    urls = [
        f"{http_server}/a.png",
        f"{http_server}/b.jpg",
        f"{http_server}/text",
        f"{http_server}/to-metadata",
    ]
    job_id = runtime.uploads.ingest_urls(ADMIN, urls, {"source": "feed"})
    _settle(runtime)
    job = runtime.jobs.store.get(job_id)
    assert job.counts["done"] == 2 and job.counts["failed"] == 2 and job.state is State.PARTIAL
    reasons = {f["item"]: f["reason"] for f in runtime.jobs.failed_items(ADMIN, job_id)}
    assert "not a recognised image" in reasons[f"{http_server}/text"]
    assert "169.254.169.254" in reasons[f"{http_server}/to-metadata"]
    hits = runtime.search.text(ADMIN, "anything", k=5)
    assert {h.payload["source_url"] for h in hits} == set(urls[:2])
    assert all(h.payload["source"] == "feed" for h in hits)
    with pytest.raises(FetchRefused, match="http and https"):
        runtime.uploads.ingest_urls(ADMIN, ["file:///etc/passwd"])


def test_bulk_folder_job(runtime: Runtime, tmp_path: Path) -> None:
    folder = tmp_path / "bulk"
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        (folder / ("sub" if i % 2 else ".") / f"{i}.png").write_bytes(png_bytes(100 + i))
    (folder / "broken.jpg").write_bytes(b"not really")
    (folder / ".hidden.png").write_bytes(png_bytes(999))
    job_id = runtime.uploads.bulk_folder(ADMIN, str(folder), {"sub/1.png": {"title": "one"}})
    _settle(runtime)
    job = runtime.jobs.store.get(job_id)
    assert job.total == 7 and job.counts["done"] == 6 and job.counts["failed"] == 1
    assert runtime.index.count(runtime.collections.images) == 6
    assert [
        h.payload.get("title")
        for h in runtime.search.text(ADMIN, "x", k=10, flt=None)
        if h.payload.get("title")
    ] == ["one"]
    missing = runtime.uploads.bulk_folder(ADMIN, str(tmp_path / "nope"))
    _settle(runtime)
    assert runtime.jobs.store.get(missing).state is State.FAILED


def test_worker_batches_embed_what_the_model_gives_for_the_decoded_images(
    runtime: Runtime, tiny_model_dir: Path
) -> None:
    """Batches of large JPEGs go through the decode thread (model inputs and thumbnails
    made ahead of the model): each stored vector is what the model itself gives for the
    image decoded at its input size, and each thumbnail is written."""
    photos = [jpeg_bytes(300 + i, size=(640, 480)) for i in range(9)]
    ids = [runtime.store.put(p) for p in photos]
    job_id = runtime.uploads.ingest_stored(ADMIN, ids)
    _settle(runtime)
    assert runtime.jobs.store.get(job_id).counts["done"] == 9
    side = runtime.encoder.input_size
    images = [decode_image(p, runtime.settings.images, min_side=side).image for p in photos]
    assert max(images[0].size) < 640  # decoded at a reduced scale, as the model needs
    reference = SentenceTransformer(str(tiny_model_dir), device="cpu")
    want = np.asarray(reference.encode(images, normalize_embeddings=True))
    records = runtime.index.retrieve(
        runtime.collections.images, [point_id(i) for i in ids], with_vectors=True
    )
    got = {r.payload["image_id"]: r.vector for r in records}
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), want, atol=1e-5)
    for image_id in ids:
        assert runtime.thumbnails.exists(image_id)


def test_a_failure_preparing_ahead_is_left_to_the_commit(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making model inputs and thumbnails ahead is an optimisation: when it fails (a
    processor error, memory), the chunk is embedded the ordinary way, not redelivered."""

    def broken(prepared: object) -> object:
        raise MemoryError("no room for model inputs")

    monkeypatch.setattr(runtime.pipeline.indexer, "ready", broken)
    ids = [runtime.store.put(jpeg_bytes(400 + i, size=(320, 240))) for i in range(6)]
    job_id = runtime.uploads.ingest_stored(ADMIN, ids)
    _settle(runtime)
    assert runtime.jobs.store.get(job_id).counts["done"] == 6
    assert all(runtime.thumbnails.exists(i) for i in ids)


def test_a_chunk_whose_embedding_fails_leaves_no_thumbnails(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thumbnails are written beside the model, on an I/O thread: when the model fails,
    the ones already written go again, and the items fail with the reason."""

    def broken(inputs: object) -> object:
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(runtime.encoder, "encode_preprocessed", broken)
    monkeypatch.setattr(runtime.encoder, "encode_images", broken)
    ids = [runtime.store.put(jpeg_bytes(450 + i, size=(320, 240))) for i in range(5)]
    job_id = runtime.uploads.ingest_stored(ADMIN, ids)
    _settle(runtime)
    job = runtime.jobs.store.get(job_id)
    assert job.counts["failed"] == 5
    reasons = {i["reason"] for i in runtime.jobs.failed_items(ADMIN, job_id)}
    assert reasons == {"internal error: RuntimeError: the model fell over"}
    assert not any(runtime.thumbnails.exists(i) for i in ids)
    assert not runtime.index.retrieve(runtime.collections.images, [point_id(i) for i in ids])


def test_the_local_worker_starts_a_full_model_batch_without_waiting_for_more() -> None:
    """Ingest messages wait up to ``max_wait_s`` for company, but once a model batch is in
    hand and nothing more is queued, waiting only delays it."""
    from services.jobs.dispatch import LocalQueue, LocalWorker
    from services.jobs.kinds import Kind

    batches: list[tuple[float, int]] = []

    def execute(kind: Kind, payloads: object) -> set[int]:
        batches.append((time.monotonic(), len(payloads)))  # type: ignore[arg-type]
        return set()

    messages = LocalQueue()
    worker = LocalWorker(messages, execute, batch_size=64, max_wait_s=30.0, ready_size=4)
    started = time.monotonic()
    messages.publish(Kind.INGEST, [{"n": i} for i in range(10)])
    assert messages.join(timeout_s=10)
    assert sum(n for _, n in batches) == 10
    assert batches[0][0] - started < 10  # not the 30 s a partial batch may wait
    # Fewer than a model batch still wait for company, as before.
    batches.clear()
    few = LocalWorker(LocalQueue(), execute, batch_size=64, max_wait_s=0.5, ready_size=4)
    begun = time.monotonic()
    few.queue.publish(Kind.INGEST, [{"n": 0}, {"n": 1}])
    assert few.queue.join(timeout_s=10)
    assert batches == [(batches[0][0], 2)] and batches[0][0] - begun >= 0.45
    worker.close()
    few.close()


def test_upload_refuses_bad_items_and_stores_nothing_for_them(runtime: Runtime) -> None:
    receipt = runtime.uploads.upload(
        ADMIN, [IngestItem(png_bytes(5), "ok.png"), IngestItem(b"junk", "bad.jpg")]
    )
    assert [r["filename"] for r in receipt.refused] == ["bad.jpg"]
    _settle(runtime)
    assert runtime.jobs.store.get(receipt.job_id).counts["done"] == 1  # type: ignore[arg-type]
    with pytest.raises(InvalidImage, match=r"bad\.jpg"):
        runtime.uploads.upload(ADMIN, [IngestItem(b"junk", "bad.jpg")])
    assert len(list(runtime.store.ids())) == 1


def test_reconcile_requeues_stored_images_without_points(runtime: Runtime) -> None:
    orphan = runtime.store.put(png_bytes(77))  # e.g. a worker crashed before upsert
    job_id, n = runtime.uploads.reconcile(ADMIN)
    assert n == 1 and job_id
    _settle(runtime)
    assert runtime.search.record(ADMIN, orphan).id
    assert runtime.uploads.reconcile(ADMIN) == (None, 0)


def test_delete_job(runtime: Runtime) -> None:
    receipt = runtime.uploads.upload(
        ADMIN, [IngestItem(png_bytes(i), f"{i}.png") for i in range(3)]
    )
    _settle(runtime)
    victim = receipt.accepted[0]["image_id"]
    job_id = runtime.uploads.delete(ADMIN, [victim])
    _settle(runtime)
    assert runtime.jobs.store.get(job_id).state is State.DONE
    assert not runtime.store.exists(victim)
    with pytest.raises(NotFound):
        runtime.search.record(ADMIN, victim)
    with pytest.raises(NotFound):
        runtime.uploads.delete(ADMIN, ["0" * 64])


def test_transient_index_failure_retries_then_fails_and_can_be_retried(
    settings: Settings,
    encoder,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """A Qdrant server that is down: real client, real connection errors, bounded retries."""
    port = free_port()
    down = ServerIndex(
        QdrantClient(url=f"http://127.0.0.1:{port}", timeout=1, check_compatibility=False)
    )
    settings = settings.model_copy(
        update={
            "queue": settings.queue.model_copy(
                update={"retry_backoff_s": 0.01, "max_retries": 2, "batch_max_wait_s": 0.01}
            ),
            # An explicit prefix: the index is down, so the switch pointer cannot be read.
            "index": settings.index.model_copy(update={"collection_prefix": ""}),
        }
    )
    rt = build_runtime(settings, encoder=encoder, index=down)
    receipt = rt.uploads.upload(ADMIN, [IngestItem(png_bytes(1), "a.png", {"title": "kept"})])
    _settle(rt)
    (failed,) = rt.jobs.failed_items(ADMIN, receipt.job_id)  # type: ignore[arg-type]
    assert "gave up after 2 retries" in failed["reason"] and "unreachable" in failed["reason"]
    # The index comes back (here: another adapter over local storage); retry the failed item.
    up = ServerIndex(QdrantClient(path=str(tmp_path / "qdrant-up")))
    rt2 = build_runtime(settings, encoder=encoder, index=up)
    rt2.open()
    rt.pipeline.indexer = rt2.ingestor.indexer
    assert rt.uploads.retry_failed(ADMIN, receipt.job_id) == 1
    _settle(rt)
    assert rt.jobs.store.get(receipt.job_id).state is State.DONE
    (hit,) = rt2.search.text(ADMIN, "x", k=1)
    assert hit.payload["title"] == "kept"  # metadata survived the retry
    rt2.close()
    rt.worker.close()  # type: ignore[union-attr]


@pytest.fixture(params=["memory", "redis"])
def job_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "memory":
        yield MemoryJobStore()
        return
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield RedisJobStore(server.client())
    server.stop()


def test_job_store_contract(job_store: JobStore) -> None:
    job_id = job_store.create("upload", ["a", "b", "c"], {"who": "test"})
    job = job_store.get(job_id)
    assert job.state is State.QUEUED and job.total == 3 and job.meta == {"who": "test"}
    job_store.set_item(job_id, "a", State.PROCESSING)
    assert job_store.get(job_id).state is State.PROCESSING
    job_store.set_item(job_id, "a", State.DONE, image_id="i-a")
    job_store.set_item(job_id, "a", State.DONE)  # redelivered: counted once
    job_store.set_item(job_id, "b", State.FAILED, "broken")
    assert job_store.attempt(job_id, "c#.0") == 1 and job_store.attempt(job_id, "c#.0") == 2
    job_store.set_item(job_id, "c", State.DONE)
    job = job_store.get(job_id)
    assert job.counts == {"queued": 0, "processing": 0, "done": 2, "failed": 1}
    assert job.state is State.PARTIAL  # "done" only when every item is done
    (failed,) = job_store.items(job_id, State.FAILED)
    assert failed.key == "b" and failed.reason == "broken"
    assert {i.key: i.attempts for i in job_store.items(job_id)} == {"a": 0, "b": 0, "c": 2}
    assert job_store.items(job_id, State.DONE)[0].image_id == "i-a"
    all_failed = job_store.create("upload", ["x"])
    job_store.set_item(all_failed, "x", State.FAILED, "bad")
    assert job_store.get(all_failed).state is State.FAILED
    with pytest.raises(NotFound):
        job_store.get("nope")
    all_done = job_store.create("upload", ["y"])
    job_store.set_item(all_done, "y", State.DONE)
    assert job_store.get(all_done).state is State.DONE


def test_job_store_keeps_what_per_item_accounting_needs(job_store: JobStore) -> None:
    events = {"a": {"job_id": "j", "item": "a", "image_id": "1"}}
    job_id = job_store.create("upload", ["a", "b"], events=events, job_id="j")
    assert job_id == "j" and not job_store.get(job_id).published
    job_store.mark_published(job_id)
    assert job_store.get(job_id).published
    statuses = job_store.statuses(job_id, ["a", "b", "missing"])
    assert set(statuses) == {"a", "b"} and statuses["a"].event == events["a"]
    assert statuses["a"].since and statuses["a"].state is State.QUEUED
    job_store.set_item(job_id, "a", State.PROCESSING)
    assert job_store.statuses(job_id, ["a"])["a"].event == events["a"]  # kept
    # Chunk markers: written before processing, cleared once the outcome is recorded.
    job_store.begin(job_id, ["a", "b"], "2:w1")
    assert job_store.markers(job_id, ["a", "b", "c"]) == {"a": "2:w1", "b": "2:w1"}
    job_store.finish(job_id, ["a"])
    assert job_store.markers(job_id, ["a", "b"]) == {"b": "2:w1"}
    assert job_store.count_death(job_id, "b") == 1 and job_store.count_death(job_id, "b") == 2
    # Dead letters: kept newest first until replayed or dropped.
    first = job_store.add_dead_letter("ingest", {"job_id": "j", "oops": 1}, "malformed")
    second = job_store.add_dead_letter("ingest", [1, 2], "not an object")
    assert [d.id for d in job_store.dead_letters()] == [second, first]
    taken = job_store.take_dead_letter(first)
    assert taken.payload == {"job_id": "j", "oops": 1} and taken.reason == "malformed"
    assert [d.id for d in job_store.dead_letters()] == [second]
    with pytest.raises(NotFound):
        job_store.take_dead_letter(first)
