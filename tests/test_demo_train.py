"""The demo trainer's shortcuts compute what the plain computation would."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from demo.synth import all_products
from demo.tokenizer import build_tokenizer
from demo.train import CaptionBank, make_model, partial_caption, vocabulary


def test_caption_plan_encodes_each_caption_once_and_restores_the_order() -> None:
    torch.manual_seed(0)
    tokenizer = build_tokenizer(vocabulary())
    vocab = tokenizer.get_vocab()
    model = make_model(len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"]).eval()
    products = all_products()
    bank = CaptionBank(tokenizer, products)
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
