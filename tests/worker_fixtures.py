"""What the worker tests share: a real Redis, Celery worker processes, the publishing side
as the web service builds it, and a look into the index once the worker has exited."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.index.edge import EdgeIndex
from services.ingest.intake import IngestItem
from services.runtime import Runtime, build_runtime
from services.settings import load_settings
from tests.conftest import ADMIN, png_bytes
from tests.servers import RedisServer, WorkerProcess
from workers.dispatch import dispatcher_for


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_aof(tmp_path: Path) -> Iterator[RedisServer]:
    """Redis with an append-only file, as in production: an outage loses no data."""
    server = RedisServer(tmp_path / "redis", persistent=True)
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


def worker_env(tmp_path: Path, model: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """Environment of a worker and its publisher: small batches, a short visibility
    timeout so killed workers' messages come back quickly."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SIGHTLINE_MODEL": str(model),
        "SIGHTLINE_DATA_DIR": str(tmp_path / "data"),
        "SIGHTLINE_INDEX__PATH": str(tmp_path / "index"),
        "SIGHTLINE_BATCH_SIZE": "8",
        "SIGHTLINE_QUEUE__BROKER_URL": redis_url,
        "SIGHTLINE_QUEUE__BATCH_MAX_WAIT_S": "0.2",
        "SIGHTLINE_QUEUE__VISIBILITY_TIMEOUT_S": "5",
        **extra,
    }


def build_publisher(env: dict[str, str]) -> Runtime:
    """The publishing side as the web service builds it (it never opens the index)."""
    keys = {k: v for k, v in env.items() if k.startswith("SIGHTLINE_")}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        settings = load_settings()
        return build_runtime(settings, dispatcher_for(settings))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def upload(runtime: Runtime, seeds: range) -> tuple[str, list[str]]:
    """Upload distinct images through the service; the job id and the image ids."""
    receipt = runtime.uploads.upload(
        ADMIN, [IngestItem(png_bytes(s), f"img{s}.png", {"n": s}) for s in seeds]
    )
    assert not receipt.refused
    return receipt.job_id, [a["image_id"] for a in receipt.accepted]


def indexed_ids(tmp_path: Path) -> list[str]:
    """Every point id in the embedded index (read after the worker exited)."""
    index = EdgeIndex(tmp_path / "index")
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
