"""Per-process wiring of the ingestion side: job store, dispatcher, pipeline, uploads.

Interfaces (CLI, web, Celery workers) call ``build_runtime`` once per process.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.container import Services, build_services, redis_client
from services.jobs import JobStore, MemoryJobStore, RedisJobStore
from services.pipeline import Pipeline
from services.settings import Settings
from services.uploads import UploadService
from workers.dispatch import CeleryDispatcher, InProcessDispatcher


@dataclass
class Runtime:
    """Everything needed to publish and to process ingestion work."""

    services: Services
    jobs: JobStore
    dispatcher: CeleryDispatcher | InProcessDispatcher
    pipeline: Pipeline
    uploads: UploadService

    @property
    def embedded(self) -> bool:
        """True when work runs on a thread of this process (no broker configured)."""
        return isinstance(self.dispatcher, InProcessDispatcher)

    def close(self) -> None:
        """Finish in-process work, then release the index."""
        if isinstance(self.dispatcher, InProcessDispatcher):
            self.dispatcher.close()
        self.services.close()


def build_runtime(settings: Settings, services: Services | None = None) -> Runtime:
    """Celery + Redis job store when a broker is configured, else an in-process queue."""
    services = services or build_services(settings)
    q = settings.queue
    dispatcher: CeleryDispatcher | InProcessDispatcher
    jobs: JobStore
    if q.broker_url:
        from workers.celery_app import create_celery

        jobs = RedisJobStore(redis_client(q.broker_url))
        dispatcher = CeleryDispatcher(create_celery(settings))
    else:
        jobs = MemoryJobStore()
        dispatcher = InProcessDispatcher(jobs, settings.ingest_batch_size, q.batch_max_wait_s)
    pipeline = Pipeline(
        ingestor=services.ingestor,
        store=services.store,
        jobs=jobs,
        dispatcher=dispatcher,
        queue=q,
        fetch_settings=settings.fetch,
        limits=settings.images,
        review=services.review,
    )
    if isinstance(dispatcher, InProcessDispatcher):
        dispatcher.bind(pipeline)
    uploads = UploadService(services.ingestor, services.store, jobs, dispatcher)
    return Runtime(services, jobs, dispatcher, pipeline, uploads)
