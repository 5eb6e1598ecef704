"""Wiring: build every service once from Settings, for the CLI, web and workers alike."""

from __future__ import annotations

from dataclasses import dataclass

from services.encoder import Encoder
from services.index.base import VectorIndex
from services.ingest import Ingestor
from services.search import SearchService
from services.settings import IndexBackend, Settings
from services.store import ImageStore
from services.thumbnails import ThumbnailStore

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
        ),
        search=SearchService(encoder, index, settings.images, collections.images),
    )
