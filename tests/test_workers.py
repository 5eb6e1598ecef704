"""Event-driven ingestion with a real redis-server and real Celery worker processes.

The embedded index can be opened by one process at a time, so each test reads it after
the worker has exited.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from services.ids import point_id
from services.index.edge import EdgeIndex
from services.ingest.intake import IngestItem
from services.jobs.store import State
from services.runtime import Runtime, build_runtime
from services.settings import Settings
from services.tagging.labels import RedisTaxonomyStore
from services.tagging.taxonomy import parse_taxonomy
from tests.conftest import ADMIN, png_bytes
from tests.servers import RedisServer, wait_for
from tests.worker_fixtures import build_publisher, indexed_ids, upload, worker_env


def _deliveries(runtime: Runtime, job_id: str) -> int:
    return sum(i.attempts for i in runtime.jobs.store.items(job_id))


def _in_flight(runtime: Runtime, job_id: str, delivery: int) -> bool:
    """The item's ``delivery``-th delivery has begun processing: counted and marked
    processing (a kill between the two is before any work, and rightly not a death)."""
    items = runtime.jobs.store.items(job_id)
    return sum(i.attempts for i in items) == delivery and any(
        i.state is State.PROCESSING for i in items
    )


def _large_png(width: int = 4000, height: int = 3000) -> bytes:
    """A large image that compresses well: random 8x8 blocks."""
    blocks = np.random.default_rng(0).integers(0, 256, (height // 8, width // 8, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(blocks).resize((width, height), Image.Resampling.NEAREST).save(buf, "PNG")
    return buf.getvalue()


def _done(runtime: Runtime, job_id: str) -> bool:
    return runtime.jobs.store.get(job_id).state in (State.DONE, State.PARTIAL, State.FAILED)


def test_fifty_uploads_indexed_once(
    make_worker, tmp_path: Path, tiny_model_dir: Path, redis_server: RedisServer
) -> None:
    env = worker_env(tmp_path, tiny_model_dir, redis_server.url)
    worker = make_worker(env).start()
    publisher = build_publisher(env)
    job_id, image_ids = upload(publisher, range(50))
    # The same 10 images again: a duplicated event must not add points.
    dup_job, _ = upload(publisher, range(10))
    wait_for(
        lambda: _done(publisher, job_id) and _done(publisher, dup_job), 120, "the jobs to finish"
    )
    job = publisher.jobs.store.get(job_id)
    assert job.state is State.DONE and job.counts["done"] == 50 and job.counts["failed"] == 0
    worker.stop()
    ids = indexed_ids(tmp_path)
    assert sorted(ids) == sorted(point_id(i) for i in image_ids)
    log = (tmp_path / "worker.log").read_text()
    assert "sightline.ingest" in log


def test_sigkill_mid_batch_then_restart_indexes_each_once(
    make_worker, tmp_path: Path, slow_model_dir: Path, redis_server: RedisServer
) -> None:
    env = worker_env(tmp_path, slow_model_dir, redis_server.url)
    worker = make_worker(env).start()
    publisher = build_publisher(env)
    job_id, image_ids = upload(publisher, range(50))
    wait_for(lambda: publisher.jobs.store.get(job_id).counts["done"] >= 8, 120, "a first batch")
    worker.kill()
    done_at_kill = publisher.jobs.store.get(job_id).counts["done"]
    assert 8 <= done_at_kill < 50, "the worker finished before it could be killed mid-job"
    # The killed worker's reserved, unacknowledged messages come back after the visibility
    # timeout and are processed by the restarted worker.
    worker.start()
    wait_for(
        lambda: _done(publisher, job_id), 180, "the job to finish after restart", interval_s=0.2
    )
    job = publisher.jobs.store.get(job_id)
    assert job.counts["done"] == 50 and job.counts["failed"] == 0
    worker.stop()
    ids = indexed_ids(tmp_path)
    assert len(ids) == len(set(ids)) == 50
    assert set(ids) == {point_id(i) for i in image_ids}


def test_reserved_messages_of_a_killed_worker_are_not_lost(
    make_worker, tmp_path: Path, tiny_model_dir: Path, redis_server: RedisServer
) -> None:
    env = worker_env(tmp_path, tiny_model_dir, redis_server.url, SIGHTLINE_BATCH_SIZE="16")
    # A long max wait: the worker reserves the messages and holds them, waiting to batch.
    worker = make_worker(env).start(SIGHTLINE_QUEUE__BATCH_MAX_WAIT_S="60")
    publisher = build_publisher(env)
    job_id, image_ids = upload(publisher, range(10))
    r = redis_server.client()
    wait_for(lambda: r.hlen("unacked") == 10, 30, "the worker to reserve all 10 messages")
    worker.kill()
    assert publisher.jobs.store.get(job_id).counts["done"] == 0
    worker.start(SIGHTLINE_QUEUE__BATCH_MAX_WAIT_S="0.2")
    wait_for(
        lambda: _done(publisher, job_id), 120, "redelivery of the reserved messages", interval_s=0.2
    )
    assert publisher.jobs.store.get(job_id).counts["done"] == 10
    worker.stop()
    assert sorted(indexed_ids(tmp_path)) == sorted(point_id(i) for i in image_ids)


def test_corrupt_image_fails_with_reason_and_adds_no_point(
    make_worker, tmp_path: Path, tiny_model_dir: Path, redis_server: RedisServer
) -> None:
    env = worker_env(tmp_path, tiny_model_dir, redis_server.url)
    publisher = build_publisher(env)
    # A client that bypassed the API's validation: corrupt bytes already in the store.
    good = png_bytes(1, size=(200, 200))
    corrupt_id = publisher.store.put(good[: len(good) // 3])
    fine_id = publisher.store.put(png_bytes(2))
    worker = make_worker(env).start()
    job_id = publisher.uploads.ingest_stored(ADMIN, [corrupt_id, fine_id])
    wait_for(lambda: _done(publisher, job_id), 60, "the job to settle")
    job = publisher.jobs.store.get(job_id)
    assert job.state is State.PARTIAL and job.counts == {
        "queued": 0,
        "processing": 0,
        "done": 1,
        "failed": 1,
    }
    (failed,) = publisher.jobs.failed_items(ADMIN, job_id)
    assert failed["item"] == corrupt_id and "corrupt or truncated PNG" in failed["reason"]
    assert not publisher.store.exists(corrupt_id)  # nothing half-written remains
    worker.stop()
    assert indexed_ids(tmp_path) == [point_id(fine_id)]


def test_worker_survives_redis_restart(
    make_worker, tmp_path: Path, tiny_model_dir: Path, redis_server: RedisServer
) -> None:
    env = worker_env(tmp_path, tiny_model_dir, redis_server.url)
    worker = make_worker(env).start()
    redis_server.stop()
    redis_server.start()  # same port, empty data
    publisher = build_publisher(env)
    job_id, image_ids = upload(publisher, range(3))
    wait_for(
        lambda: _done(publisher, job_id), 120, "the upload after the Redis restart", interval_s=0.2
    )
    assert publisher.jobs.store.get(job_id).counts["done"] == 3
    worker.stop()
    assert sorted(indexed_ids(tmp_path)) == sorted(point_id(i) for i in image_ids)


def test_item_that_keeps_killing_its_worker_ends_failed(
    make_worker, tmp_path: Path, slow_model_dir: Path, redis_server: RedisServer
) -> None:
    env = worker_env(
        tmp_path, slow_model_dir, redis_server.url, SIGHTLINE_QUEUE__MAX_DELIVERIES="2"
    )
    worker = make_worker(env)
    publisher = build_publisher(env)
    # A 12-megapixel image: decoding, thumbnailing and checking it keep it in flight for
    # hundreds of milliseconds, so the kill lands before it is done even on a slow day (a
    # 48x40 image was done within the poll-to-kill latency once in CI).
    receipt = publisher.uploads.upload(ADMIN, [IngestItem(_large_png(), "poison.png", {})])
    job_id = receipt.job_id
    for delivery in (1, 2):
        worker.start()
        # Kill the worker each time it starts processing this image: a "poison" message.
        wait_for(
            lambda: _in_flight(publisher, job_id, delivery),  # noqa: B023
            60,
            f"delivery {delivery} in flight",
            0.005,
        )
        worker.kill()
    worker.start()  # third delivery: over the budget, given up without processing
    wait_for(lambda: _done(publisher, job_id), 60, "the item to be given up", interval_s=0.2)
    (failed,) = publisher.jobs.failed_items(ADMIN, job_id)
    assert "killed the worker 2 times" in failed["reason"]
    assert failed["attempts"] == 3
    worker.stop()


def test_embedded_mode_runs_the_same_pipeline_in_process(settings: Settings, encoder) -> None:  # type: ignore[no-untyped-def]
    runtime = build_runtime(settings, encoder=encoder)
    runtime.open()
    assert runtime.local
    job_id, _ = upload(runtime, range(12))
    assert runtime.wait_idle(timeout_s=60)
    job = runtime.jobs.store.get(job_id)
    assert job.state is State.DONE and job.counts["done"] == 12
    assert runtime.index.count(runtime.collections.images) == 12
    runtime.close()


def test_taxonomy_change_reaches_a_running_worker(
    make_worker, tmp_path: Path, tiny_model_dir: Path, redis_server: RedisServer
) -> None:
    """Another process replaces the taxonomy; the worker tags with it without a restart."""
    env = worker_env(tmp_path, tiny_model_dir, redis_server.url)
    store = RedisTaxonomyStore(redis_server.client())
    first = parse_taxonomy("dimensions: [{name: colour, labels: [red, green, blue]}]")
    store.put(first)
    worker = make_worker(env).start()
    publisher = build_publisher(env)
    job_a, [image_a] = upload(publisher, range(1))
    wait_for(lambda: _done(publisher, job_a), 60, "the first image")
    second = parse_taxonomy("dimensions: [{name: shade, labels: [dark, light]}]")
    store.put(second)  # the worker is not restarted
    job_b, [image_b] = upload(publisher, range(1, 2))
    wait_for(lambda: _done(publisher, job_b), 60, "the second image")
    worker.stop()
    index = EdgeIndex(tmp_path / "index")
    try:
        records = {
            r.id: r.payload
            for r in index.retrieve("images", [point_id(image_a), point_id(image_b)])
        }
        labels, _ = index.scroll("labels", limit=100)
    finally:
        index.close()
    assert records[point_id(image_a)]["taxonomy_version"] == first.version
    assert set(records[point_id(image_a)]["tags"]) == {"colour"}
    assert records[point_id(image_b)]["taxonomy_version"] == second.version
    assert set(records[point_id(image_b)]["tags"]) == {"shade"}
    # The worker stored the vectors of the version it found missing.
    assert {r.payload["version"] for r in labels} >= {second.version}
