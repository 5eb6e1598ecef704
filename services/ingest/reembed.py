"""Re-embed a catalog with another model into new collections, then switch to them.

Vectors from two models never share a collection, so a model change builds a complete
second set of collections from the stored originals, while the old set keeps serving;
the switch at the end is one atomic pointer change (a Qdrant alias on a server).
"""

from __future__ import annotations

from collections.abc import Callable

from services.encoder import Encoder
from services.errors import InvalidImage, InvalidInput, NotFound
from services.images import decode_image
from services.index.base import PointData, VectorIndex
from services.jobs.store import JobStore, State
from services.moderation.flagged import entry_pixels
from services.settings import ImageLimits
from services.storage.files import ImageStore


def reembed(
    *,
    index: VectorIndex,
    store: ImageStore,
    limits: ImageLimits,
    source_prefix: str,
    target_prefix: str,
    target: Encoder,
    jobs: JobStore,
    job_id: str,
    switch: bool = True,
    page: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
    flagged_store: ImageStore | None = None,
    keypoint_threshold: int = 40,
) -> int:
    """Copy every image of ``source_prefix`` into ``target_prefix`` with ``target``'s vectors.

    Returns the number of images re-embedded. Images whose original is missing or no longer
    decodes are failed items of the job; the switch happens only if none failed.
    """
    if source_prefix == target_prefix:
        raise InvalidInput("re-embed needs a new collection prefix")
    source, dest = f"{source_prefix}images", f"{target_prefix}images"
    if index.collection_identity(source) is None:
        raise NotFound(f"collection {source!r} does not exist")
    identity = target.identity
    for name in ("images", "labels", "flagged"):
        index.ensure_collection(f"{target_prefix}{name}", identity)
    total = index.count(source)
    done = 0
    offset: str | None = None
    while True:
        records, offset = index.scroll(source, limit=page, offset=offset)
        jobs.add_items(job_id, [r.id for r in records])
        points, images = [], []
        for r in records:
            image_id = str(r.payload.get("image_id", ""))
            try:
                decoded = decode_image(store.get(image_id), limits, min_side=target.input_size)
            except (NotFound, InvalidImage) as e:
                jobs.set_item(job_id, r.id, State.FAILED, str(e), image_id=image_id or None)
                continue
            images.append(decoded.image)
            points.append((r.id, r.payload))
        if images:
            vectors = target.encode_images(images)
            index.upsert(
                dest,
                [
                    PointData(pid, v, payload)
                    for (pid, payload), v in zip(points, vectors, strict=True)
                ],
            )
            for pid, payload in points:
                jobs.set_item(job_id, pid, State.DONE, image_id=str(payload.get("image_id")))
        done += len(records)
        if on_progress is not None:
            on_progress(done, total)
        if offset is None:
            break
    _reembed_flagged(
        index, source_prefix, target_prefix, target, limits, flagged_store, keypoint_threshold
    )
    failed = jobs.get(job_id).counts["failed"]
    if switch and not failed:
        index.set_active_prefix(target_prefix)
    elif switch:
        jobs.fail_job(job_id, f"{failed} images could not be re-embedded; not switched")
    return done - failed


def _reembed_flagged(
    index: VectorIndex,
    source_prefix: str,
    target_prefix: str,
    target: Encoder,
    limits: ImageLimits,
    originals: ImageStore | None,
    keypoint_threshold: int,
) -> None:
    """Carry the flagged set over: text concepts from their text, images from their kept
    originals (an entry whose original is gone cannot be carried and is left out)."""
    offset: str | None = None
    while True:
        records, offset = index.scroll(f"{source_prefix}flagged", limit=64, offset=offset)
        points = []
        for r in records:
            payload = dict(r.payload)
            if r.payload.get("kind") == "text":
                vector = target.encode_texts([str(r.payload.get("source", ""))])[0]
            elif originals is not None:
                try:
                    data = originals.get(str(r.payload.get("original", "")))
                    image = decode_image(data, limits, min_side=target.input_size).image
                except (NotFound, InvalidImage):
                    continue
                vector = target.encode_images([image])[0]
                # Entries flagged before the current pixel signals gain them here.
                payload.update(entry_pixels(image, keypoint_threshold))
            else:
                continue
            points.append(PointData(r.id, vector, payload))
        if points:
            index.upsert(f"{target_prefix}flagged", points)
        if offset is None:
            return
