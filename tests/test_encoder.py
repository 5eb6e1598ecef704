"""Encoder: loads by path once, unit vectors, model identity, logit scale from the weights."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel

from services.encoder import Encoder, ModelFamily
from services.errors import ModelUnavailable


def test_vectors_are_unit_float32(encoder: Encoder) -> None:
    imgs = [Image.new("RGB", (40, 30), (i * 40, 0, 0)) for i in range(5)]
    v = encoder.encode_images(imgs)
    t = encoder.encode_texts(["a red dress", "a blue shoe"])
    assert v.dtype == np.float32 and t.dtype == np.float32
    assert v.shape == (5, encoder.identity.size) and t.shape == (2, encoder.identity.size)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert encoder.encode_texts([]).shape == (0, encoder.identity.size)


def test_logit_scale_read_from_weights(encoder: Encoder, tiny_model_dir: Path) -> None:
    hf = CLIPModel.from_pretrained(tiny_model_dir)
    assert encoder.logit_scale == pytest.approx(math.exp(hf.logit_scale.detach().item()), rel=1e-5)
    assert encoder.family is ModelFamily.CLIP
    assert encoder.logit_bias is None


def test_identity_distinguishes_models(encoder: Encoder, other_model_dir: Path) -> None:
    other = Encoder(str(other_model_dir))
    assert encoder.identity.size == other.identity.size == 16
    assert encoder.identity.model_id != other.identity.model_id  # same folder name, other weights
    assert encoder.identity.model_id.startswith("local:tiny-clip@")


def test_load_runs_once_under_concurrency(tiny_model_dir: Path) -> None:
    enc = Encoder(str(tiny_model_dir))
    assert not enc.loaded  # constructing loads nothing
    threads = [threading.Thread(target=enc.load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model = enc._model
    enc.load()
    assert enc._model is model


def test_unloadable_model_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="SIGHTLINE_MODEL") as exc:
        Encoder("no-such-org/no-such-model-xyz").load()
    assert "no-such-org/no-such-model-xyz" in str(exc.value)
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(ModelUnavailable):
        Encoder(str(empty)).load()


def test_text_only_model_refused(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    # A BERT-style text encoder saved as a sentence-transformer: text only, no image tower.
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"])
    )
    tok = BertTokenizerFast(vocab_file=str(vocab))
    cfg = BertConfig(
        vocab_size=31,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    bert_dir = tmp_path / "bert"
    BertModel(cfg).save_pretrained(bert_dir)
    tok.save_pretrained(bert_dir)
    st = SentenceTransformer(modules=[Transformer(str(bert_dir)), Pooling(16)])
    st.save(str(tmp_path / "text-only"))
    with pytest.raises(ModelUnavailable, match="not a text\\+image model"):
        Encoder(str(tmp_path / "text-only")).load()
