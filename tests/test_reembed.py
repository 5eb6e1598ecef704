"""Model change: re-embed into new collections, switch, and refuse the old model after."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sentence_transformers import SentenceTransformer

from services.encoder import Encoder
from services.errors import InvalidInput, ModelMismatch
from services.index.base import VectorIndex
from services.ingest.intake import IngestItem
from services.jobs.store import State
from services.runtime import build_runtime
from services.settings import Settings
from tests.brute import top_k
from tests.conftest import ADMIN, png_bytes


def test_reembed_then_switch(
    settings: Settings, encoder: Encoder, index: VectorIndex, other_model_dir: Path
) -> None:
    runtime = build_runtime(settings, encoder=encoder, index=index)
    runtime.open()
    items = [IngestItem(png_bytes(i), f"{i}.png", {"title": f"t{i}"}) for i in range(10)]
    ids = [r.image_id for r in runtime.ingestor.ingest(ADMIN, items).results]
    text_entry = runtime.moderation.flagged.add_text("a photo of a weapon", "weapons", "t")
    image_entry = runtime.moderation.flagged.add_image(png_bytes(99), "counterfeit", "t")

    job_id = runtime.uploads.reembed(ADMIN, str(other_model_dir), "v2_")
    assert runtime.wait_idle(timeout_s=120)
    job = runtime.jobs.store.get(job_id)
    assert job.state is State.DONE and job.counts["done"] == 10
    assert index.active_prefix() == "v2_"
    assert index.count("v2_images") == 10 and index.count("images") == 10  # old set kept

    # The new vectors are the new model's embeddings of the stored originals.
    reference = SentenceTransformer(str(other_model_dir), device="cpu")
    want = np.asarray(
        reference.encode(
            [Image.open(io.BytesIO(png_bytes(i))).convert("RGB") for i in range(10)],
            normalize_embeddings=True,
        )
    )
    got = {
        r.payload["image_id"]: r for r in index.scroll("v2_images", limit=100, with_vectors=True)[0]
    }
    for i, image_id in enumerate(ids):
        assert got[image_id].payload["title"] == f"t{i}"
        np.testing.assert_allclose(got[image_id].vector, want[i], atol=1e-5)
    # The flagged set comes along, embedded by the new model.
    flagged = {r.id: r for r in index.scroll("v2_flagged", limit=10, with_vectors=True)[0]}
    np.testing.assert_allclose(
        flagged[text_entry.id].vector,
        reference.encode(["a photo of a weapon"], normalize_embeddings=True)[0],
        atol=1e-5,
    )
    flagged_image = Image.open(io.BytesIO(png_bytes(99))).convert("RGB")
    np.testing.assert_allclose(
        flagged[image_entry.id].vector,
        reference.encode([flagged_image], normalize_embeddings=True)[0],
        atol=1e-5,
    )

    # After the switch a process with the new model uses the new set...
    new_settings = settings.model_copy(update={"model": str(other_model_dir)})
    switched = build_runtime(new_settings, encoder=Encoder(str(other_model_dir)), index=index)
    assert switched.collections.images == "v2_images"
    switched.open()
    q = reference.encode(["a red dress"], normalize_embeddings=True)[0]
    hits = switched.search.text(ADMIN, "a red dress", k=4)
    assert [h.image_id for h in hits] == [w[0] for w in top_k(q, ids, want, 4)]
    # ...and a process still on the old model is refused with a clear message.
    stale = build_runtime(settings, encoder=encoder, index=index)
    with pytest.raises(ModelMismatch, match="Re-embed"):
        stale.open()
    runtime.close()


def test_reembed_needs_a_new_prefix(
    settings: Settings, encoder: Encoder, index: VectorIndex
) -> None:
    runtime = build_runtime(settings, encoder=encoder, index=index)
    runtime.open()
    with pytest.raises(InvalidInput, match="prefix"):
        runtime.uploads.reembed(ADMIN, "whatever", "")
    runtime.close()
