"""The demo trainer's shortcuts compute what the plain computation would."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from demo.synth import all_products
from demo.tokenizer import build_tokenizer
from demo.train import (
    CaptionBank,
    attribute_codes,
    contrastive_loss,
    make_model,
    partial_caption,
    positives,
    vocabulary,
)


def untrained():  # type: ignore[no-untyped-def]
    """The trainer's tokenizer, a freshly initialised model (seed 0) and its caption bank."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer(vocabulary())
    vocab = tokenizer.get_vocab()
    model = make_model(len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"])
    return tokenizer, model, CaptionBank(tokenizer, all_products())


def test_caption_plan_encodes_each_caption_once_and_restores_the_order() -> None:
    tokenizer, model, bank = untrained()
    model.eval()
    products = all_products()
    rng = random.Random(3)
    captions = [partial_caption(rng.choice(products), rng)[0] for _ in range(96)]
    assert len(set(captions)) < len(captions), "the sample should repeat partial captions"

    groups, order = bank.plan(captions)

    assert sum(len(ids) for ids, _ in groups) == len(set(captions))
    assert len(groups) == 2
    with torch.no_grad():
        planned = torch.cat(
            [
                model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
                for ids, mask in groups
            ]
        )[order]
        # Brute force: every caption on its own, tokenised afresh, no padding at all.
        alone = torch.cat(
            [
                model.get_text_features(**tokenizer([c], return_tensors="pt")).pooler_output
                for c in captions
            ]
        )
    torch.testing.assert_close(F.normalize(planned, dim=-1), F.normalize(alone, dim=-1))


def test_bf16_towers_give_the_fp32_loss_and_gradients() -> None:
    """bf16 autocast is a speed-up, not a different objective: same loss to within bf16's
    rounding, gradients pointing the same way for every parameter."""
    _, model, bank = untrained()
    products = all_products()
    rng = random.Random(5)
    batch = [rng.choice(products) for _ in range(32)]
    facts = [partial_caption(p, rng) for p in batch]
    text, order = bank.plan([f[0] for f in facts])
    match = positives(
        attribute_codes([vars(p) for p in batch]), attribute_codes([f[1] for f in facts])
    )
    images = torch.randn(len(batch), 3, 64, 64)

    results = {}
    for bf16 in (False, True):
        model.zero_grad()
        loss, _ = contrastive_loss(model, bf16)(images, text, order, match)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[bf16] = (loss.item(), grads)

    (loss32, grads32), (loss16, grads16) = results[False], results[True]
    assert loss16 != loss32, "bf16 autocast did not take effect"
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert grads16.keys() == grads32.keys() and len(grads32) > 50
    for name, g32 in grads32.items():
        g16 = grads16[name]
        assert g16.dtype == torch.float32, name
        if g32.norm() > 1e-6:
            cosine = F.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
            assert cosine > 0.99, (name, float(cosine))
