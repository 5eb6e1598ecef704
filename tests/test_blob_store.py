"""One contract for where bytes live, run against a directory and against S3-compatible
object storage (moto's standalone server on loopback, spoken to over real HTTP by boto3,
as production speaks to S3 or MinIO); then the whole service graph on object storage."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from services.auth.principal import Scope
from services.encoder import Encoder
from services.errors import NotFound, StorageUnavailable
from services.ids import point_id, sha256_hex
from services.ingest.indexer import Outcome
from services.ingest.intake import IngestItem
from services.runtime import build_runtime
from services.settings import Settings, StorageSettings
from services.storage.blobs import Blobs, FileBlobs
from services.storage.files import ImageStore
from services.storage.s3 import S3Blobs
from services.storage.thumbnails import ThumbnailStore
from tests.conftest import ADMIN, jpeg_bytes, make_index, png_bytes
from tests.servers import RedisServer, WorkerProcess, free_port, wait_for
from tests.worker_fixtures import build_publisher, indexed_ids, worker_env
from web import create_app

BUCKET = "sightline-test"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    _client(endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _client(endpoint: str, attempts: int = 3) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": attempts, "mode": "standard"}),
    )


@pytest.fixture(params=["filesystem", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    if request.param == "filesystem":
        return FileBlobs(tmp_path / "blobs")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Blobs(_client(endpoint), BUCKET, f"t/{tmp_path.name}")


def test_put_get_exists_delete_list(blobs: Blobs) -> None:
    blobs.put("ab/cd/one", b"1")
    blobs.put("ab/ef/two", b"22")
    blobs.put("zz/three", b"333")
    blobs.put("ab/cd/one", b"uno")  # a second write replaces the first
    assert blobs.get("ab/cd/one") == b"uno" and blobs.get("zz/three") == b"333"
    assert blobs.exists("ab/ef/two") and not blobs.exists("ab/ef/none")
    assert sorted(blobs.list_keys()) == ["ab/cd/one", "ab/ef/two", "zz/three"]
    assert sorted(blobs.list_keys("ab/")) == ["ab/cd/one", "ab/ef/two"]
    assert blobs.delete("ab/ef/two") is True and blobs.delete("ab/ef/two") is False
    with pytest.raises(NotFound):
        blobs.get("ab/ef/two")
    blobs.check_writable()  # the probe is not a key anyone lists
    assert ".probe" not in list(blobs.list_keys())
    for bad in ("", "../escape", "a/../../b", "/absolute"):
        with pytest.raises(NotFound):
            blobs.get(bad)


def test_image_and_thumbnail_stores_on_any_blobs(blobs: Blobs) -> None:
    from services.settings import ImageLimits

    store = ImageStore(blobs)
    data = jpeg_bytes(1, size=(300, 200))
    image_id = store.put(data)
    assert image_id == sha256_hex(data) and store.put(data) == image_id  # stored once
    assert store.get(image_id) == data and list(store.ids()) == [image_id]
    thumbnails = ThumbnailStore(blobs, store, ImageLimits())
    assert not thumbnails.exists(image_id, 64)
    thumb = thumbnails.get(image_id, 64)  # made from the original on demand
    assert thumb[:2] == b"\xff\xd8" and thumbnails.exists(image_id, 64)
    assert thumbnails.get(image_id, 64) == thumb
    thumbnails.delete(image_id)
    assert not thumbnails.exists(image_id, 64)
    assert store.delete(image_id) and not store.exists(image_id)
    with pytest.raises(NotFound):
        store.get(image_id)
    assert list(store.ids()) == []


def test_object_storage_down_is_transient(s3_endpoint: str) -> None:
    """A store that cannot be reached is retried later (StorageUnavailable), never
    mistaken for a missing image."""
    dead = S3Blobs(_client(f"http://127.0.0.1:{free_port()}", attempts=1), BUCKET)
    with pytest.raises(StorageUnavailable):
        dead.get("ab/cd/x")
    with pytest.raises(StorageUnavailable):
        dead.put("ab/cd/x", b"x")
    with pytest.raises(StorageUnavailable):
        dead.exists("ab/cd/x")


def test_runtime_on_object_storage(
    s3_endpoint: str, tmp_path: Path, tiny_model_dir: Path, encoder: Encoder
) -> None:
    """Ingest stores originals and thumbnails in the bucket (read back by another
    client), the pipeline reads them from there, search finds the images, and nothing is
    written under DATA_DIR/images."""
    storage = StorageSettings(
        backend="s3",
        bucket=BUCKET,
        prefix=f"rt-{tmp_path.name}",
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id=SecretStr("test"),
        secret_access_key=SecretStr("test"),
    )
    settings = Settings(data_dir=tmp_path / "d", model=str(tiny_model_dir), storage=storage)
    runtime = build_runtime(settings, encoder=encoder, index=make_index("embedded", tmp_path))
    runtime.open()
    try:
        items = [IngestItem(png_bytes(i, size=(64, 48)), f"{i}.png", {}) for i in range(5)]
        report = runtime.ingestor.ingest(ADMIN, items)
        assert report.count(Outcome.INDEXED) == 5
        ids = [r.image_id for r in report.results]
        listed = _client(s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix=storage.prefix)
        keys = {o["Key"] for o in listed["Contents"]}
        for image_id, item in zip(ids, items, strict=True):
            assert f"{storage.prefix}/images/{image_id[:2]}/{image_id[2:4]}/{image_id}" in keys
            assert f"{storage.prefix}/thumbnails/256/{image_id[:2]}/{image_id}.jpg" in keys
            assert runtime.store.get(image_id) == item.data
        thumb = runtime.search.thumbnail(ADMIN, ids[2], 512)  # made on demand, kept
        assert thumb[:2] == b"\xff\xd8"
        assert runtime.thumbnails.blobs.exists(f"512/{ids[2][:2]}/{ids[2]}.jpg")
        hits = runtime.search.similar(ADMIN, ids[2], k=4)
        assert ids[2] not in {h.image_id for h in hits} and len(hits) == 4
        assert runtime.health()["storage"] is True
        assert not settings.images_path.exists()
    finally:
        runtime.close()


def test_unique_prefixes_resolve_to_stored_ids(blobs: Blobs) -> None:
    from services.errors import InvalidInput

    store = ImageStore(blobs)
    ids = [store.put(png_bytes(i)) for i in range(40)]
    for image_id in ids:
        assert store.resolve(image_id[:8]) == image_id
        assert store.resolve(image_id.upper()) == image_id
    # Two ids that share a prefix: it is ambiguous until it is long enough.
    first, second = "abcdef" + "0" * 58, "abcdef" + "1" * 58
    for image_id in (first, second):
        blobs.put(ImageStore.key_for(image_id), b"x")
    with pytest.raises(InvalidInput, match="ambiguous"):
        store.resolve("abcdef")
    assert store.resolve("abcdef1") == second
    with pytest.raises(NotFound):
        store.resolve("abcdee")
    for bad in ("abc", "xyzxyzxyz", "../../etc"):
        with pytest.raises(InvalidInput):
            store.resolve(bad)


def test_api_upload_on_object_storage_is_embedded_by_a_worker_process(
    s3_endpoint: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    redis_server: RedisServer,
    make_worker: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    """The API stores the originals in the bucket and publishes ids; a Celery worker in
    another process, with a data folder of its own (so nothing is shared but the bucket),
    reads each original from the bucket and embeds it: what workers on other machines do."""
    prefix = f"api-{tmp_path.name}"
    s3 = {
        "SIGHTLINE_STORAGE__BACKEND": "s3",
        "SIGHTLINE_STORAGE__BUCKET": BUCKET,
        "SIGHTLINE_STORAGE__PREFIX": prefix,
        "SIGHTLINE_STORAGE__ENDPOINT_URL": s3_endpoint,
        "SIGHTLINE_STORAGE__REGION": "us-east-1",
        "SIGHTLINE_STORAGE__ACCESS_KEY_ID": "test",
        "SIGHTLINE_STORAGE__SECRET_ACCESS_KEY": "test",
        "SIGHTLINE_WEB__SECRET_KEY": "test-secret",
    }
    api_env = worker_env(tmp_path / "api", tiny_model_dir, redis_server.url, **s3)
    worker_env_ = worker_env(tmp_path, tiny_model_dir, redis_server.url, **s3)
    worker = make_worker(worker_env_).start()
    publisher = build_publisher(api_env)
    app = create_app(publisher.settings, runtime=publisher)
    _, token = publisher.access.create_key(ADMIN, "uploader", [Scope.INGEST])
    files = [(io.BytesIO(png_bytes(i, size=(64, 48))), f"p{i}.png") for i in range(6)]
    r = app.test_client().post(
        "/api/v1/images",
        data={"files": files},
        headers={"Authorization": f"Bearer {token}"},
        content_type="multipart/form-data",
    )
    assert r.status_code == 202, r.json
    job_id, ids = r.json["job_id"], [a["image_id"] for a in r.json["accepted"]]

    def finished() -> bool:
        return publisher.jobs.store.get(job_id).state.value in ("done", "partial", "failed")

    wait_for(finished, 120, "the worker to embed the uploads")
    assert publisher.jobs.store.get(job_id).counts["done"] == 6
    worker.stop()
    assert sorted(indexed_ids(tmp_path)) == sorted(point_id(i) for i in ids)
    keys = {
        o["Key"]
        for o in _client(s3_endpoint).list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    }
    for image_id in ids:  # the original came from the API, the thumbnail from the worker
        assert f"{prefix}/images/{image_id[:2]}/{image_id[2:4]}/{image_id}" in keys
        assert f"{prefix}/thumbnails/256/{image_id[:2]}/{image_id}.jpg" in keys
    for side in (tmp_path / "api" / "data", tmp_path / "data"):
        assert not (side / "images").exists() and not (side / "thumbnails").exists()
    publisher.close()
