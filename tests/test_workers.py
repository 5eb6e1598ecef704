"""Event-driven ingestion with a real redis-server and real Celery worker processes.

The embedded index can be opened by one process at a time, so each test reads it after
the worker has exited.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demo.tiny_model import build_tiny_clip
from services.ids import point_id
from services.index.edge import EdgeIndex
from services.ingest.intake import IngestItem
from services.jobs.store import State
from services.runtime import Runtime, build_runtime
from services.settings import Settings
from services.tagging.labels import RedisTaxonomyStore
from services.tagging.taxonomy import parse_taxonomy
from tests.conftest import ADMIN, png_bytes
from tests.servers import RedisServer, WorkerProcess, wait_for
from workers.dispatch import dispatcher_for


@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Still tiny on disk, but slow enough (224px, 6 layers) to kill a worker mid-batch."""
    return build_tiny_clip(
        tmp_path_factory.mktemp("slow") / "slow-clip",
        image_size=224,
        patch_size=16,
        vision_hidden=256,
        vision_layers=6,
    )


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_worker(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    """Worker processes that are stopped at teardown, whatever the test asserted."""
    workers: list[WorkerProcess] = []

    def make(env: dict[str, str]) -> WorkerProcess:
        workers.append(WorkerProcess(env, tmp_path / "worker.log"))
        return workers[-1]

    yield make
    for worker in workers:
        worker.stop()


def _env(tmp_path: Path, model: Path, redis_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SIGHTLINE_MODEL": str(model),
        "SIGHTLINE_DATA_DIR": str(tmp_path / "data"),
        "SIGHTLINE_BATCH_SIZE": "8",
        "SIGHTLINE_QUEUE__BROKER_URL": redis_url,
        "SIGHTLINE_QUEUE__BATCH_MAX_WAIT_S": "0.2",
        "SIGHTLINE_QUEUE__VISIBILITY_TIMEOUT_S": "5",
        **extra,
    }


def _publisher(env: dict[str, str]) -> Runtime:
    """The publishing side as the web service builds it (it never opens the index)."""
    keys = {k: v for k, v in env.items() if k.startswith("SIGHTLINE_")}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        from services.settings import load_settings

        settings = load_settings()
        return build_runtime(settings, dispatcher_for(settings))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _indexed_ids(tmp_path: Path) -> list[str]:
    """Every point id in the embedded index (read after the worker exited)."""
    index = EdgeIndex(tmp_path / "data" / "index")
    try:
        ids: list[str] = []
        offset = None
        while True:
            page, offset = index.scroll("images", limit=256, offset=offset)
            ids.extend(r.id for r in page)
            if offset is None:
                return ids
    finally:
        index.close()


def _upload(runtime: Runtime, seeds: range) -> tuple[str, list[str]]:
    receipt = runtime.uploads.upload(
        ADMIN, [IngestItem(png_bytes(s), f"img{s}.png", {"n": s}) for s in seeds]
    )
    assert receipt.job_id is not None and not receipt.refused
    return receipt.job_id, [a["image_id"] for a in receipt.accepted]


def _deliveries(runtime: Runtime, job_id: str) -> int:
    return sum(i.attempts for i in runtime.jobs.store.items(job_id))


def _done(runtime: Runtime, job_id: str) -> bool:
    return runtime.jobs.store.get(job_id).state in (State.DONE, State.FAILED)


def test_fifty_uploads_indexed_once(
    make_worker, tmp_path: Path, tiny_model_dir: Path, redis_server: RedisServer
) -> None:
    env = _env(tmp_path, tiny_model_dir, redis_server.url)
    worker = make_worker(env).start()
    publisher = _publisher(env)
    job_id, image_ids = _upload(publisher, range(50))
    # The same 10 images again: a duplicated event must not add points.
    dup_job, _ = _upload(publisher, range(10))
    wait_for(
        lambda: _done(publisher, job_id) and _done(publisher, dup_job), 120, "the jobs to finish"
    )
    job = publisher.jobs.store.get(job_id)
    assert job.state is State.DONE and job.counts["done"] == 50 and job.counts["failed"] == 0
    worker.stop()
    ids = _indexed_ids(tmp_path)
    assert sorted(ids) == sorted(point_id(i) for i in image_ids)
    log = (tmp_path / "worker.log").read_text()
    assert "sightline.ingest" in log


def test_sigkill_mid_batch_then_restart_indexes_each_once(
    make_worker, tmp_path: Path, slow_model_dir: Path, redis_server: RedisServer
) -> None:
    env = _env(tmp_path, slow_model_dir, redis_server.url)
    worker = make_worker(env).start()
    publisher = _publisher(env)
    job_id, image_ids = _upload(publisher, range(50))
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
    ids = _indexed_ids(tmp_path)
    assert len(ids) == len(set(ids)) == 50
    assert set(ids) == {point_id(i) for i in image_ids}


def test_reserved_messages_of_a_killed_worker_are_not_lost(
    make_worker, tmp_path: Path, tiny_model_dir: Path, redis_server: RedisServer
) -> None:
    env = _env(tmp_path, tiny_model_dir, redis_server.url, SIGHTLINE_BATCH_SIZE="16")
    # A long max wait: the worker reserves the messages and holds them, waiting to batch.
    worker = make_worker(env).start(SIGHTLINE_QUEUE__BATCH_MAX_WAIT_S="60")
    publisher = _publisher(env)
    job_id, image_ids = _upload(publisher, range(10))
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
    assert sorted(_indexed_ids(tmp_path)) == sorted(point_id(i) for i in image_ids)


def test_corrupt_image_fails_with_reason_and_adds_no_point(
    make_worker, tmp_path: Path, tiny_model_dir: Path, redis_server: RedisServer
) -> None:
    env = _env(tmp_path, tiny_model_dir, redis_server.url)
    publisher = _publisher(env)
    # A client that bypassed the API's validation: corrupt bytes already in the store.
    good = png_bytes(1, size=(200, 200))
    corrupt_id = publisher.store.put(good[: len(good) // 3])
    fine_id = publisher.store.put(png_bytes(2))
    worker = make_worker(env).start()
    job_id = publisher.uploads.ingest_stored(ADMIN, [corrupt_id, fine_id])
    wait_for(lambda: _done(publisher, job_id), 60, "the job to settle")
    job = publisher.jobs.store.get(job_id)
    assert job.state is State.DONE and job.counts == {
        "queued": 0,
        "processing": 0,
        "done": 1,
        "failed": 1,
    }
    (failed,) = publisher.jobs.failed_items(ADMIN, job_id)
    assert failed["item"] == corrupt_id and "corrupt or truncated PNG" in failed["reason"]
    assert not publisher.store.exists(corrupt_id)  # nothing half-written remains
    worker.stop()
    assert _indexed_ids(tmp_path) == [point_id(fine_id)]


def test_worker_survives_redis_restart(
    make_worker, tmp_path: Path, tiny_model_dir: Path, redis_server: RedisServer
) -> None:
    env = _env(tmp_path, tiny_model_dir, redis_server.url)
    worker = make_worker(env).start()
    redis_server.stop()
    redis_server.start()  # same port, empty data
    publisher = _publisher(env)
    job_id, image_ids = _upload(publisher, range(3))
    wait_for(
        lambda: _done(publisher, job_id), 120, "the upload after the Redis restart", interval_s=0.2
    )
    assert publisher.jobs.store.get(job_id).counts["done"] == 3
    worker.stop()
    assert sorted(_indexed_ids(tmp_path)) == sorted(point_id(i) for i in image_ids)


def test_item_that_keeps_killing_its_worker_ends_failed(
    make_worker, tmp_path: Path, slow_model_dir: Path, redis_server: RedisServer
) -> None:
    env = _env(tmp_path, slow_model_dir, redis_server.url, SIGHTLINE_QUEUE__MAX_DELIVERIES="2")
    worker = make_worker(env)
    publisher = _publisher(env)
    job_id, _ = _upload(publisher, range(1))
    for delivery in (1, 2):
        worker.start()
        # Kill the worker each time it starts processing this image: a "poison" message.
        wait_for(
            lambda: _deliveries(publisher, job_id) == delivery,  # noqa: B023
            60,
            f"delivery {delivery}",
            0.005,
        )
        worker.kill()
    worker.start()  # third delivery: over the budget, given up without processing
    wait_for(lambda: _done(publisher, job_id), 60, "the item to be given up", interval_s=0.2)
    (failed,) = publisher.jobs.failed_items(ADMIN, job_id)
    assert "gave up after 2 deliveries" in failed["reason"]
    assert failed["attempts"] == 3
    worker.stop()


def test_embedded_mode_runs_the_same_pipeline_in_process(settings: Settings, encoder) -> None:  # type: ignore[no-untyped-def]
    runtime = build_runtime(settings, encoder=encoder)
    runtime.open()
    assert runtime.local
    job_id, _ = _upload(runtime, range(12))
    assert runtime.wait_idle(timeout_s=60)
    job = runtime.jobs.store.get(job_id)
    assert job.state is State.DONE and job.counts["done"] == 12
    assert runtime.index.count(runtime.collections.images) == 12
    runtime.close()


def test_taxonomy_change_reaches_a_running_worker(
    make_worker, tmp_path: Path, tiny_model_dir: Path, redis_server: RedisServer
) -> None:
    """Another process replaces the taxonomy; the worker tags with it without a restart."""
    env = _env(tmp_path, tiny_model_dir, redis_server.url)
    store = RedisTaxonomyStore(redis_server.client())
    first = parse_taxonomy("dimensions: [{name: colour, labels: [red, green, blue]}]")
    store.put(first)
    worker = make_worker(env).start()
    publisher = _publisher(env)
    job_a, [image_a] = _upload(publisher, range(1))
    wait_for(lambda: _done(publisher, job_a), 60, "the first image")
    second = parse_taxonomy("dimensions: [{name: shade, labels: [dark, light]}]")
    store.put(second)  # the worker is not restarted
    job_b, [image_b] = _upload(publisher, range(1, 2))
    wait_for(lambda: _done(publisher, job_b), 60, "the second image")
    worker.stop()
    index = EdgeIndex(tmp_path / "data" / "index")
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
