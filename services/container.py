"""Wiring: build every service once from Settings, for the CLI, web and workers alike."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.accounts import AccountStore, RedisAccountStore, SqliteAccountStore
from services.apikeys import KeyStore, RedisKeyStore, SqliteKeyStore
from services.audit import AuditLog, RedisAuditLog, SqliteAuditLog
from services.encoder import Encoder
from services.errors import IndexUnavailable
from services.index.base import VectorIndex
from services.ingest import Ingestor
from services.labels import FileTaxonomyStore, LabelBank, RedisTaxonomyStore, TaxonomyStore
from services.moderation import FlaggedSet
from services.ocr import RapidOcrReader
from services.review import ReviewService
from services.search import SearchService
from services.settings import IndexBackend, Settings
from services.store import ImageStore
from services.tagging import Tagger
from services.taxonomy import Taxonomy
from services.thumbnails import ThumbnailStore

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


def build_index(settings: Settings) -> VectorIndex:
    """The configured index adapter (the client libraries are imported only when chosen)."""
    if settings.index.backend is IndexBackend.SERVER:
        from qdrant_client import QdrantClient

        from services.index.server import ServerIndex

        api_key = settings.index.api_key.get_secret_value() if settings.index.api_key else None
        client = QdrantClient(
            url=settings.index.url, api_key=api_key, timeout=settings.index.timeout_s
        )
        return ServerIndex(client, hnsw_ef=settings.index.hnsw_ef)
    from services.index.edge import EdgeIndex

    return EdgeIndex(settings.index_path, hnsw_ef=settings.index.hnsw_ef)


@functools.cache
def redis_client(url: str) -> Redis:
    """One client, and so one connection pool, per broker URL in a process: every
    Redis-backed store shares it (redis-py resets the pool itself after a fork)."""
    import redis

    return redis.Redis.from_url(url)


def build_taxonomy_store(settings: Settings) -> TaxonomyStore:
    """Redis when there is a broker (every process reads it), else a file beside the data."""
    if url := settings.queue.broker_url:
        return RedisTaxonomyStore(redis_client(url))
    return FileTaxonomyStore(settings.data_dir / "taxonomy.json")


def build_audit_log(settings: Settings) -> AuditLog:
    """Redis stream with a broker (shared by every process), else SQLite beside the data."""
    if url := settings.queue.broker_url:
        return RedisAuditLog(redis_client(url))
    return SqliteAuditLog(settings.data_dir / "audit.sqlite")


def build_keys(settings: Settings) -> KeyStore:
    """Redis when there is a broker (shared by every process), else a SQLite file."""
    if url := settings.queue.broker_url:
        return RedisKeyStore(redis_client(url))
    return SqliteKeyStore(settings.data_dir / "auth.sqlite")


def build_accounts(settings: Settings) -> AccountStore:
    """Dashboard accounts beside the API keys: Redis with a broker, else SQLite."""
    if url := settings.queue.broker_url:
        return RedisAccountStore(redis_client(url))
    return SqliteAccountStore(settings.data_dir / "auth.sqlite")


def build_encoder(settings: Settings) -> Encoder:
    """The encoder for the configured model (not loaded yet)."""
    return Encoder(settings.model, device=settings.device, batch_size=settings.batch_size)


@dataclass
class Services:
    """Everything an interface needs, built once per process."""

    settings: Settings
    collections: Collections
    store: ImageStore
    thumbnails: ThumbnailStore
    encoder: Encoder
    index: VectorIndex
    ingestor: Ingestor
    search: SearchService
    labels: LabelBank
    tagger: Tagger
    flagged: FlaggedSet
    review: ReviewService
    audit: AuditLog

    def open(self) -> None:
        """Load the model and create or verify every collection against it.

        Raises:
            ModelUnavailable: the model cannot be loaded.
            ModelMismatch: a collection was built with another model.
        """
        identity = self.encoder.identity
        for name in self.collections.all():
            self.index.ensure_collection(name, identity)
        # Fields every query filters or groups on: indexed so filtered HNSW search stays fast.
        for field in INDEXED_FIELDS:
            self.index.index_keyword(self.collections.images, field)
        try:
            dimensions = self.labels.dimension_names()
        except IndexUnavailable as e:  # readiness reports the broker; serve what we can
            log.warning("taxonomy not readable at start-up: %s", e)
            dimensions = []
        for name in dimensions:
            self.index.index_keyword(self.collections.images, f"tags.{name}")

    def replace_taxonomy(self, taxonomy: Taxonomy) -> str:
        """Make a taxonomy current for every process; returns its version.

        Existing images keep their old tags until a re-tag job rewrites them.
        """
        labels = self.labels.replace(taxonomy)
        for dim in taxonomy.dimensions:
            self.index.index_keyword(self.collections.images, f"tags.{dim.name}")
        return labels.version

    def close(self) -> None:
        """Release the index."""
        self.index.close()


def build_services(
    settings: Settings, encoder: Encoder | None = None, index: VectorIndex | None = None
) -> Services:
    """Build the service graph; tests pass their own encoder or index."""
    encoder = encoder or build_encoder(settings)
    index = index or build_index(settings)
    prefix = settings.index.collection_prefix
    if not prefix and "collection_prefix" not in settings.index.model_fields_set:
        prefix = index.active_prefix() or ""
    collections = Collections.with_prefix(prefix)
    store = ImageStore(settings.images_path)
    thumbnails = ThumbnailStore(settings.data_dir / "thumbnails", store, settings.images)
    labels = LabelBank(encoder, index, collections.labels, build_taxonomy_store(settings))
    tagger = Tagger(encoder, labels, RapidOcrReader(), settings.images)
    flagged = FlaggedSet(
        encoder,
        index,
        collections.flagged,
        settings.moderation,
        settings.images,
        ImageStore(settings.data_dir / "flagged"),
    )
    audit = build_audit_log(settings)
    return Services(
        settings=settings,
        collections=collections,
        store=store,
        encoder=encoder,
        index=index,
        thumbnails=thumbnails,
        ingestor=Ingestor(
            store,
            encoder,
            index,
            settings.images,
            collections.images,
            settings.batch_size,
            thumbnails=thumbnails,
            tagger=tagger,
            moderator=flagged,
            audit=audit,
        ),
        search=SearchService(encoder, index, settings.images, collections.images),
        labels=labels,
        tagger=tagger,
        flagged=flagged,
        review=ReviewService(index, collections.images, store, thumbnails, flagged, audit),
        audit=audit,
    )
