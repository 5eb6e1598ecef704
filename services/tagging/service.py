"""Tagging as callers use it: the taxonomy, re-tag jobs, and tags of one image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from services.audit import AuditLog
from services.auth.principal import Principal, Scope
from services.errors import NoTaxonomy
from services.index.base import VectorIndex
from services.ingest.fetch import fetch_image
from services.jobs.kinds import Kind
from services.jobs.service import JobService
from services.jobs.store import SCAN_ITEM
from services.search.service import SearchService
from services.settings import FetchSettings
from services.storage.files import ImageStore
from services.tagging.labels import LabelBank, embed_taxonomy
from services.tagging.retag import retag
from services.tagging.scoring import Tagger, TagResult, score_vectors
from services.tagging.taxonomy import Taxonomy

PREVIEW_SAMPLES = 6


class TaggingService:
    """Reads and replaces the taxonomy, re-tags the catalog, tags single images."""

    def __init__(
        self,
        labels: LabelBank,
        tagger: Tagger,
        search: SearchService,
        store: ImageStore,
        jobs: JobService,
        audit: AuditLog,
        fetch_settings: FetchSettings,
        max_bytes: int,
    ) -> None:
        self.labels = labels
        self.tagger = tagger
        self.search = search
        self.store = store
        self.jobs = jobs
        self.audit = audit
        self.fetch_settings = fetch_settings
        self.max_bytes = max_bytes

    @property
    def index(self) -> VectorIndex:
        """The index the catalog lives in."""
        return self.search.index

    def taxonomy(self, caller: Principal) -> Taxonomy | None:
        """The current taxonomy, or None before one was loaded."""
        caller.require(Scope.SEARCH)
        return self.labels.store.get()

    def dimension_names(self) -> list[str]:
        """Names of the current taxonomy's dimensions (``colour=red`` filter shorthands)."""
        return self.labels.dimension_names()

    def index_dimensions(self, names: Sequence[str]) -> None:
        """Payload indexes on the tag fields that filters use."""
        for name in names:
            self.index.index_keyword(self.search.collection, f"tags.{name}")

    def replace(
        self, caller: Principal, taxonomy: Taxonomy, retag: bool = True
    ) -> tuple[str, str | None]:
        """Make a taxonomy current for every process; returns its version and the re-tag
        job (None when ``retag`` is false: existing images keep their old tags)."""
        caller.require(Scope.ADMIN)
        version = self.labels.replace(taxonomy).version
        self.index_dimensions([d.name for d in taxonomy.dimensions])
        self.audit.record(
            caller.name,
            "taxonomy.replace",
            version,
            None,
            {"dimensions": [d.name for d in taxonomy.dimensions]},
        )
        job_id = self._start_retag(caller, version) if retag else None
        return version, job_id

    def retag(self, caller: Principal) -> str:
        """Queue a re-tag of the whole catalog with the current taxonomy.

        Raises:
            NoTaxonomy: none is loaded.
        """
        caller.require(Scope.ADMIN)
        labels = self.labels.current()
        if labels is None:
            raise NoTaxonomy("no taxonomy is loaded")
        return self._start_retag(caller, labels.version)

    def _start_retag(self, caller: Principal, version: str) -> str:
        job_id = self.jobs.start(
            "retag",
            Kind.RETAG,
            lambda job: [{"job_id": job}],
            keys=[SCAN_ITEM],
            meta={"taxonomy_version": version},
        )
        self.audit.record(caller.name, "catalog.retag", job_id, None, {"version": version})
        return job_id

    def run_retag(self, job_id: str) -> int:
        """The re-tag job's body (run by a worker)."""
        return retag(
            index=self.index,
            collection=self.search.collection,
            store=self.store,
            tagger=self.tagger,
            jobs=self.jobs.store,
            job_id=job_id,
        )

    def tag_stored(self, caller: Principal, image_id: str, **options: Any) -> TagResult:
        """Tags of a stored image the caller can see (its stored vector, no re-embedding)."""
        record = self.search.record(caller, image_id, with_vector=True)
        original = self.store.get(str(record.payload["image_id"]))
        assert record.vector is not None  # read with_vector
        return self.tagger.tag_one(record.vector, original, **options)

    def tag_bytes(self, caller: Principal, data: bytes, **options: Any) -> TagResult:
        """Tags of an image that is not stored."""
        caller.require(Scope.SEARCH)
        return self.tagger.tag_bytes(data, **options)

    def tag_url(self, caller: Principal, url: str, **options: Any) -> TagResult:
        """Tags of an image downloaded from a URL (with the ingest's SSRF guards)."""
        caller.require(Scope.SEARCH)
        data, _ = fetch_image(url, self.fetch_settings, self.max_bytes)
        return self.tagger.tag_bytes(data, **options)

    def preview(
        self, caller: Principal, taxonomy: Taxonomy, samples: int = PREVIEW_SAMPLES
    ) -> list[tuple[str, TagResult]]:
        """The tags a proposed taxonomy would give a few catalog images (nothing is saved)."""
        caller.require(Scope.ADMIN)
        records, _ = self.index.scroll(self.search.collection, limit=samples, with_vectors=True)
        if not records:
            return []
        vectors = np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
        encoder = self.tagger.encoder
        results = score_vectors(encoder, vectors, embed_taxonomy(encoder, taxonomy))
        return [(str(r.payload["image_id"]), t) for r, t in zip(records, results, strict=True)]
