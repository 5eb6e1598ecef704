"""Re-tag the catalog when the taxonomy changes, page by page, with job progress."""

from __future__ import annotations

import numpy as np

from services.errors import InvalidImage, NotFound
from services.index.base import VectorIndex
from services.jobs.store import SCAN_ITEM, JobStore, State
from services.storage.files import ImageStore
from services.tagging.scoring import Tagger


def retag(
    *,
    index: VectorIndex,
    collection: str,
    store: ImageStore,
    tagger: Tagger,
    jobs: JobStore,
    job_id: str,
    page: int = 128,
) -> int:
    """Write the current taxonomy's tags into every image's payload; returns how many.

    The label set is read once, so one job applies one taxonomy version throughout; the
    stored vectors are reused (no image is embedded again). OCR, when the taxonomy enables
    it, reads the stored originals.
    """
    label_set = tagger.labels.current()
    if label_set is None:
        jobs.fail_job(job_id, "no taxonomy is loaded")
        return 0
    ocr = label_set.taxonomy.ocr
    done = 0
    offset: str | None = None
    while True:
        records, offset = index.scroll(collection, limit=page, offset=offset, with_vectors=True)
        if not records:
            break
        jobs.add_items(job_id, [r.id for r in records])
        texts: list[str | None] | None = None
        if ocr.enabled:
            texts = []
            for r in records:
                try:
                    data = store.get(str(r.payload.get("image_id")))
                    texts.extend(tagger.read_texts([data], ocr.min_confidence))
                except (NotFound, InvalidImage):
                    texts.append(None)
        vectors = np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
        for r, tags in zip(records, tagger.score(vectors, label_set, texts), strict=True):
            index.set_payload(collection, [r.id], tags.payload())
            jobs.set_item(job_id, r.id, State.DONE, image_id=str(r.payload.get("image_id")))
            done += 1
        if offset is None:
            break
    # The job was created with this item, so it cannot look finished before the scan is.
    jobs.set_item(job_id, SCAN_ITEM, State.DONE)
    return done
