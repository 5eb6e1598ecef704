"""The composition root: every client, store and service built once per process, here.

CLI, web, Celery workers and benchmarks all call ``build_runtime``; nothing else in the
code base constructs a client or loads a model. The one thing an interface brings is the
dispatcher when a broker is configured (Celery lives in ``workers``, which the domain
does not import); without a broker, work runs on a thread of this process.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.audit import AuditLog, RedisAuditLog, SqliteAuditLog
from services.auth.accounts import AccountStore, RedisAccountStore, SqliteAccountStore
from services.auth.apikeys import KeyStore, RedisKeyStore, SqliteKeyStore
from services.auth.service import AccessService
from services.backup.service import BackupService, Stores
from services.encoder import Encoder
from services.errors import ConfigError, SightlineError, Unavailable
from services.index.base import VectorIndex, VectorStorage
from services.ingest.indexer import Indexer, Ingestor
from services.ingest.pipeline import Pipeline
from services.ingest.uploads import UploadService
from services.jobs.dispatch import Dispatcher, LocalQueue, LocalWorker, Payload
from services.jobs.kinds import Kind, execute
from services.jobs.service import JobService
from services.jobs.store import JobStore, MemoryJobStore, RedisJobStore
from services.moderation.flagged import FlaggedSet
from services.moderation.review import ReviewService
from services.moderation.service import ModerationService
from services.search.service import SearchService
from services.settings import IndexBackend, Settings
from services.storage.blobs import Blobs, FileBlobs
from services.storage.files import ImageStore
from services.storage.thumbnails import ThumbnailStore
from services.tagging.labels import FileTaxonomyStore, LabelBank, RedisTaxonomyStore, TaxonomyStore
from services.tagging.ocr import RapidOcrReader
from services.tagging.scoring import Tagger
from services.tagging.service import TaggingService

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)
INDEXED_FIELDS = ("image_id", "moderation_status", "product_id")


@dataclass(frozen=True)
class Collections:
    """Collection names, with the configured prefix applied."""

    images: str
    labels: str
    flagged: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Collections:
        """Names for one deployment (a prefix lets two models live side by side)."""
        return cls(images=f"{prefix}images", labels=f"{prefix}labels", flagged=f"{prefix}flagged")

    def all(self) -> list[str]:
        """Every collection name."""
        return [self.images, self.labels, self.flagged]


def vector_storage(settings: Settings) -> VectorStorage:
    """How new collections keep their vectors and, on a cluster, their copies."""
    config = settings.index
    return VectorStorage(
        config.quantization,
        config.vectors_on_disk,
        config.oversampling,
        config.replication_factor,
        config.write_consistency_factor,
    )


def build_index(settings: Settings) -> VectorIndex:
    """The configured index adapter (the client libraries are imported only when chosen)."""
    storage = vector_storage(settings)
    if settings.index.backend is IndexBackend.SERVER:
        from qdrant_client import QdrantClient

        from services.index.server import ServerIndex

        api_key = settings.index.api_key.get_secret_value() if settings.index.api_key else None
        client = QdrantClient(
            url=settings.index.url, api_key=api_key, timeout=settings.index.timeout_s
        )
        return ServerIndex(client, hnsw_ef=settings.index.hnsw_ef, storage=storage)
    from services.index.edge import EdgeIndex

    return EdgeIndex(settings.index_path, hnsw_ef=settings.index.hnsw_ef, storage=storage)


def build_blobs(settings: Settings) -> Callable[[str], Blobs]:
    """Blobs per area (images, thumbnails, flagged): directories under DATA_DIR, or key
    prefixes in one bucket through one S3 client."""
    config = settings.storage
    if config.backend == "s3":
        import boto3
        from botocore.config import Config

        from services.storage.s3 import S3Blobs

        secret = config.secret_access_key
        client = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            aws_access_key_id=config.access_key_id.get_secret_value()
            if config.access_key_id
            else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            # Bounded: a store that does not answer is retried by the pipeline's backoff,
            # not by a worker hanging inside one request.
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
        )
        bucket = config.bucket or ""
        return lambda area: S3Blobs(client, bucket, f"{config.prefix.strip('/')}/{area}")
    paths = {"images": settings.images_path}
    return lambda area: FileBlobs(paths.get(area, settings.data_dir / area))


@functools.cache
def redis_client(url: str) -> Redis:
    """One client, and so one connection pool, per broker URL in a process: every
    Redis-backed store shares it (redis-py resets the pool itself after a fork)."""
    import redis

    return redis.Redis.from_url(url)


def build_taxonomy_store(settings: Settings) -> TaxonomyStore:
    """Redis when there is a broker (every process reads it), else a file beside the data."""
    if url := settings.queue.broker:
        return RedisTaxonomyStore(redis_client(url))
    return FileTaxonomyStore(settings.data_dir / "taxonomy.json")


def build_audit_log(settings: Settings) -> AuditLog:
    """Redis stream with a broker (shared by every process), else SQLite beside the data."""
    if url := settings.queue.broker:
        return RedisAuditLog(redis_client(url))
    return SqliteAuditLog(settings.data_dir / "audit.sqlite")


def build_keys(settings: Settings) -> KeyStore:
    """Redis when there is a broker (shared by every process), else a SQLite file."""
    if url := settings.queue.broker:
        return RedisKeyStore(redis_client(url))
    return SqliteKeyStore(settings.data_dir / "auth.sqlite")


def build_accounts(settings: Settings) -> AccountStore:
    """Dashboard accounts beside the API keys: Redis with a broker, else SQLite."""
    if url := settings.queue.broker:
        return RedisAccountStore(redis_client(url))
    return SqliteAccountStore(settings.data_dir / "auth.sqlite")


def build_access(
    settings: Settings, keys: KeyStore | None = None, accounts: AccountStore | None = None
) -> AccessService:
    """Keys and accounts alone (the CLI's ``keys`` and ``admin`` need no model or index)."""
    return AccessService(
        keys or build_keys(settings),
        accounts or build_accounts(settings),
        build_audit_log(settings),
    )


def build_job_store(settings: Settings) -> JobStore:
    """Redis with a broker (every process reads it), else this process's memory."""
    if url := settings.queue.broker:
        return RedisJobStore(redis_client(url))
    return MemoryJobStore()


def build_encoder(settings: Settings) -> Encoder:
    """The encoder for the configured model (not loaded yet)."""
    return Encoder(
        settings.model,
        device=settings.device,
        batch_size=settings.batch_size,
        text_model=settings.text_model,
        trust_remote_code=settings.trust_remote_code,
        runtime=settings.runtime,
        onnx_cache=settings.onnx_path,
        threads=settings.inference_threads,
        spin=settings.spin is not False,
    )


@dataclass
class Runtime:
    """Everything an interface needs, built once per process."""

    settings: Settings
    collections: Collections
    encoder: Encoder
    index: VectorIndex
    store: ImageStore
    thumbnails: ThumbnailStore
    audit: AuditLog
    dispatcher: Dispatcher
    jobs: JobService
    search: SearchService
    uploads: UploadService
    tagging: TaggingService
    moderation: ModerationService
    access: AccessService
    ingestor: Ingestor
    pipeline: Pipeline
    backups: BackupService
    worker: LocalWorker | None = None

    @property
    def local(self) -> bool:
        """True when work runs on a thread of this process (no broker configured)."""
        return self.dispatcher.local

    def open(self, load_model: bool = True) -> None:
        """Load the model and create or verify every collection against it.

        ``load_model=False`` is for a process that only reads what is stored (a review
        queue, a stored image's neighbours, an audit log): where every collection exists
        it starts without the model, which takes a CLI command from seconds to a fraction
        of one. Such a process must not embed or write vectors: nothing checked that the
        collections match the configured model.

        Raises:
            ModelUnavailable: the model cannot be loaded.
            ModelMismatch: a collection was built with another model.
        """
        names = self.collections.all()
        if load_model or not set(names) <= set(self.index.list_collections()):
            identity = self.encoder.identity
            for name in names:
                self.index.ensure_collection(name, identity)
        # Fields every query filters or groups on: indexed so filtered HNSW search stays fast.
        for field in INDEXED_FIELDS:
            self.index.index_keyword(self.collections.images, field)
        try:
            dimensions = self.tagging.dimension_names()
        except Unavailable as e:  # readiness reports the broker; serve what we can
            log.warning("taxonomy not readable at start-up: %s", e)
            dimensions = []
        self.tagging.index_dimensions(dimensions)

    def execute(self, kind: Kind, payloads: Sequence[Payload]) -> set[int]:
        """Run one unit of work through the job-kind table (what a worker does); returns
        the positions of the payloads to deliver again."""
        return execute(self, kind, payloads)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Wait until in-process work queued so far is done (True); with a broker the work
        runs elsewhere, so there is nothing to wait for here (False)."""
        if isinstance(self.dispatcher, LocalQueue):
            return self.dispatcher.join(timeout_s)
        return False

    def health(self) -> dict[str, Any]:
        """Readiness checks: ``True`` or what is wrong, per dependency."""
        checks: dict[str, Any] = {"model": self.encoder.loaded}
        try:
            self.index.list_collections()
            checks["index"] = True
        except (SightlineError, OSError) as e:
            checks["index"] = f"unreachable: {e}"
        try:
            self.store.check_writable()
            checks["storage"] = True
        except SightlineError as e:
            checks["storage"] = str(e)
        if not self.local:
            try:
                self.dispatcher.check_broker()
                checks["broker"] = True
            except SightlineError as e:
                checks["broker"] = f"unreachable: {e}"
        return checks

    def close(self) -> None:
        """Finish in-process work, then release the broker connection and the index."""
        if self.worker is not None:
            self.worker.close()
        self.dispatcher.close()
        self.index.close()


def build_runtime(
    settings: Settings,
    dispatcher: Dispatcher | None = None,
    *,
    encoder: Encoder | None = None,
    index: VectorIndex | None = None,
    keys: KeyStore | None = None,
    accounts: AccountStore | None = None,
) -> Runtime:
    """Build the service graph. ``dispatcher`` is required when a broker is configured
    (``workers.dispatch.dispatcher_for`` makes it); tests may pass their own encoder,
    index, key or account store.

    Raises:
        ConfigError: a broker is configured but no dispatcher was given.
    """
    if dispatcher is None:
        if settings.queue.broker:
            raise ConfigError("a broker is configured: pass its dispatcher to build_runtime")
        dispatcher = LocalQueue()
    encoder = encoder or build_encoder(settings)
    index = index or build_index(settings)
    prefix = settings.index.collection_prefix
    if not prefix and "collection_prefix" not in settings.index.model_fields_set:
        prefix = index.active_prefix() or ""
    collections = Collections.with_prefix(prefix)
    limits = settings.images
    blobs = build_blobs(settings)
    store = ImageStore(blobs("images"))
    thumbnails = ThumbnailStore(blobs("thumbnails"), store, limits)
    audit = build_audit_log(settings)
    jobs = JobService(build_job_store(settings), dispatcher, settings.queue.visibility_timeout_s)
    taxonomy_store = build_taxonomy_store(settings)
    labels = LabelBank(encoder, index, collections.labels, taxonomy_store)
    tagger = Tagger(encoder, labels, RapidOcrReader(), limits)
    flagged_originals = ImageStore(blobs("flagged"))
    flagged = FlaggedSet(
        encoder,
        index,
        collections.flagged,
        settings.moderation,
        limits,
        flagged_originals,
    )
    review = ReviewService(index, collections.images, store, thumbnails, flagged, audit)
    search = SearchService(
        encoder,
        index,
        limits,
        collections.images,
        store,
        thumbnails,
        settings.query_cache_size,
        settings.index.text_hnsw_ef,
        ThumbnailStore(blobs("query-thumbnails"), ImageStore(blobs("queries")), limits),
    )
    indexer = Indexer(encoder, index, collections.images, thumbnails, tagger, flagged, audit)
    max_bytes = limits.max_bytes
    keys = keys or build_keys(settings)
    accounts = accounts or build_accounts(settings)
    stores = Stores(store, flagged_originals, taxonomy_store, keys, accounts, audit)
    runtime = Runtime(
        settings=settings,
        collections=collections,
        encoder=encoder,
        index=index,
        store=store,
        thumbnails=thumbnails,
        audit=audit,
        dispatcher=dispatcher,
        jobs=jobs,
        search=search,
        uploads=UploadService(store, limits, index, collections.images, jobs, audit),
        tagging=TaggingService(
            labels, tagger, search, store, jobs, audit, settings.fetch, max_bytes
        ),
        moderation=ModerationService(
            flagged, review, search, jobs, audit, settings.fetch, max_bytes
        ),
        access=AccessService(keys, accounts, audit),
        ingestor=Ingestor(store, indexer, limits, audit, settings.batch_size),
        pipeline=Pipeline(
            store=store,
            indexer=indexer,
            jobs=jobs.store,
            dispatcher=dispatcher,
            queue=settings.queue,
            fetch_settings=settings.fetch,
            limits=limits,
            thumbnails=thumbnails,
            flagged_originals=flagged_originals,
            audit=audit,
            moderation=settings.moderation,
        ),
        backups=BackupService(index, stores, blobs("backups")),
    )
    if isinstance(dispatcher, LocalQueue):
        q = settings.queue
        runtime.worker = LocalWorker(
            dispatcher,
            runtime.execute,
            settings.ingest_batch_size,
            q.batch_max_wait_s,
            ready_size=settings.batch_size,
        )
    return runtime
