"""Train the demo CLIP on generated product photos, on CPU.

    .venv/bin/python -m demo.train [--steps 4500 | --minutes 14] [--out models/sightline-demo-clip]

Contrastive (CLIP) training with soft targets: two images of the same category x colour x
pattern in a batch are both positives for either caption. About 10% of the combinations
(``demo.synth.held_out``) are never shown, to measure generalisation to unseen combinations.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from demo.synth import (
    CATEGORIES,
    COLOURS,
    PATTERNS,
    Product,
    all_products,
    caption_phrasings,
    caption_variants,
    held_out,
    render,
)
from demo.tokenizer import build_tokenizer

IMAGE = 64  # model input; images are drawn larger and downsampled like the processor does
DRAW = 96
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "models" / "sightline-demo-clip"


def vocabulary() -> list[str]:
    """Every word the demo captions, prompts and titles use."""
    words = [
        "a",
        "an",
        "the",
        "photo",
        "of",
        "product",
        "with",
        "pattern",
        "picture",
        "clothing",
        "item",
    ]
    for name in [*CATEGORIES, *COLOURS, *PATTERNS, "stripes", "dots", "checks", "weapon", "knife"]:
        words += re.findall(r"[a-z]+|[^a-z\s]", name)
    return words


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """Exactly what CLIPImageProcessor does to a 64x64 image: scale, normalise."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 255.0
    return (torch.from_numpy(arr).permute(0, 3, 1, 2) - MEAN) / STD


def draw(product: Product, seed: int, size: int = DRAW) -> Image.Image:
    """A training image: drawn at ``size`` px, downsampled with the processor's bicubic filter."""
    return render(product, seed, size=size).resize((IMAGE, IMAGE), Image.Resampling.BICUBIC)


def _draw_job(job: tuple[Product, int, int]) -> np.ndarray:
    return np.asarray(draw(*job), dtype=np.uint8)


def training_images(
    products: list[Product], labels: list[int], sizes: list[int], seed: int, workers: int
) -> torch.Tensor:
    """Pre-drawn training pixels, each image at a size drawn from ``sizes``.

    Catalog photos are drawn at 256 px and shrunk by the processor; lines, outlines and
    pattern steps alias differently at each drawing size, so training on one size alone
    leaves a gap between training and real use.
    """
    rng = random.Random(seed)
    jobs = [(products[lab], seed + i, rng.choice(sizes)) for i, lab in enumerate(labels)]
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            arrays = pool.map(_draw_job, jobs, chunksize=256)
    else:
        arrays = [_draw_job(job) for job in jobs]
    arr = np.stack(arrays).astype(np.float32) / 255.0
    return (torch.from_numpy(arr).permute(0, 3, 1, 2) - MEAN) / STD


def partial_caption(product: Product, rng: random.Random) -> tuple[str, dict[str, str]]:
    """A caption and the attributes it states (all three half of the time)."""
    roll = rng.random()
    if roll < 0.5:
        full = {"category": product.category, "colour": product.colour, "pattern": product.pattern}
        return caption_variants(product, rng), full
    if roll < 0.7:
        return f"a photo of a {product.category}", {"category": product.category}
    if roll < 0.85:
        pair = {"category": product.category, "colour": product.colour}
        return f"a photo of a {product.colour} {product.category}", pair
    pair = {"category": product.category, "pattern": product.pattern}
    return f"a photo of a {product.pattern} {product.category}", pair


class CaptionBank:
    """Every training caption tokenised once, up front.

    Tokenising 128 captions per step costs as much as a layer of the model on two cores.
    """

    def __init__(self, tokenizer, products: list[Product]) -> None:  # type: ignore[no-untyped-def]
        captions: set[str] = set()
        for p in products:
            captions.update(caption_phrasings(p))
            captions.update(
                {
                    f"a photo of a {p.category}",
                    f"a photo of a {p.colour} {p.category}",
                    f"a photo of a {p.pattern} {p.category}",
                }
            )
        ordered = sorted(captions)
        self.row = {c: i for i, c in enumerate(ordered)}
        tokens = tokenizer(ordered, padding=True, return_tensors="pt")
        self.ids = tokens["input_ids"]
        self.mask = tokens["attention_mask"]

    def batch(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask, trimmed to the batch's longest caption: the text tower is
        causal, so trailing padding changes nothing but the step's cost."""
        rows = torch.tensor([self.row[c] for c in captions])
        mask = self.mask[rows]
        length = int(mask.sum(dim=1).max())
        return self.ids[rows, :length], mask[:, :length]

    def plan(
        self, captions: list[str], groups: int = 2
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Each distinct caption once, in ``groups`` batches of similar length, and the index
        that puts their features back in ``captions`` order.

        Half of a batch's captions are short partial ones ("a photo of a dress"), many of
        them repeated; encoding each distinct caption once, without padding it to the
        longest full caption, cuts the text tower's work by about a third.
        """
        distinct = sorted(set(captions), key=lambda c: (int(self.mask[self.row[c]].sum()), c))
        where = {c: i for i, c in enumerate(distinct)}
        size = math.ceil(len(distinct) / groups)
        chunks = [distinct[i : i + size] for i in range(0, len(distinct), size)]
        return [self.batch(chunk) for chunk in chunks], torch.tensor([where[c] for c in captions])


def make_model(vocab_size: int, bos: int, eos: int, patch: int = 16) -> CLIPModel:
    """A 1.5 M-parameter CLIP. Attention is the eager kind while training: for sequences of
    13 and 17 tokens it is faster on CPU than the fused kernel, and computes the same thing,
    so the saved model loads with whatever implementation the reader picks."""
    config = CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "max_position_embeddings": 24,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": IMAGE,
            "patch_size": patch,
        },
        projection_dim=128,
    )
    return CLIPModel._from_config(config, attn_implementation="eager")


def evaluate(model: CLIPModel, tokenizer, n: int, seed: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Zero-shot top-1 per attribute over all 320 canonical captions, seen and held-out,
    on 256-px photos as the catalog draws them."""
    device = model.logit_scale.device
    products = all_products()
    prompts = tokenizer([p.caption for p in products], padding=True, return_tensors="pt").to(device)
    hold = held_out()
    rng = random.Random(seed)
    results: dict[str, float] = {}
    model.eval()
    with torch.no_grad():
        text = F.normalize(model.get_text_features(**prompts).pooler_output, dim=-1)
        for split, pool in (
            ("seen", [p for p in products if p not in hold]),
            ("held_out", sorted(hold, key=str)),
        ):
            truth = [rng.choice(pool) for _ in range(n)]
            images = to_tensor([draw(p, seed + i, 256) for i, p in enumerate(truth)]).to(device)
            img = F.normalize(model.get_image_features(pixel_values=images).pooler_output, dim=-1)
            best = (img @ text.T).argmax(dim=1).tolist()
            for attr in ("category", "colour", "pattern"):
                hits = sum(
                    getattr(products[b], attr) == getattr(t, attr)
                    for b, t in zip(best, truth, strict=True)
                )
                results[f"{split}_{attr}_top1"] = hits / n
    model.train()
    return results


def contrastive_loss(model: CLIPModel, bf16: bool = False):  # type: ignore[no-untyped-def]
    """CLIP loss with soft targets: ``match`` marks every caption an image satisfies.

    ``text`` holds each distinct caption once (``CaptionBank.plan``); ``order`` maps the
    batch's captions onto them. With ``bf16`` the two towers run under bfloat16 autocast
    (weights, gradients and optimiser state stay fp32).
    """
    device = model.logit_scale.device.type

    def loss(
        images: torch.Tensor,
        text: list[tuple[torch.Tensor, torch.Tensor]],
        order: torch.Tensor,
        match: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            pooled = model.get_image_features(pixel_values=images).pooler_output
            features = torch.cat(
                [
                    model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
                    for ids, mask in text
                ]
            )
        # The similarities stay in fp32: at a logit scale near 100, bf16's 8-bit mantissa
        # would blur the small margins between look-alike captions.
        img = F.normalize(pooled.float(), dim=-1)
        txt = F.normalize(features.float(), dim=-1)[order]
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T
        image_targets = match / match.sum(dim=1, keepdim=True)
        text_targets = match.T / match.T.sum(dim=1, keepdim=True)
        both = F.cross_entropy(logits, image_targets) + F.cross_entropy(logits.T, text_targets)
        return both / 2, scale

    return loss


def native_bf16(device: str) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware. Where it is only emulated (CPUs
    without AVX512-BF16 or AMX), bf16 autocast makes a step slower, not faster."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


ATTRIBUTES = ("category", "colour", "pattern")
_VALUES = {"category": CATEGORIES, "colour": list(COLOURS), "pattern": PATTERNS}


def attribute_codes(facts: list[dict[str, str]]) -> torch.Tensor:
    """(n, 3) attribute indices of what each caption states; -1 where it says nothing."""
    return torch.tensor(
        [[_VALUES[a].index(f[a]) if a in f else -1 for a in ATTRIBUTES] for f in facts]
    )


def positives(images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """match[i, j] = 1 where image i has every attribute caption j states."""
    agree = (captions[None, :, :] == -1) | (captions[None, :, :] == images[:, None, :])
    return agree.all(dim=-1).float()


def sample_batch(
    rng: random.Random,
    n_images: int,
    size: int,
    lookalike: float,
    by_look: dict[tuple[str, str], list[int]],
    look_of: list[tuple[str, str]],
) -> list[int]:
    """Random image indices; a ``lookalike`` share comes in groups of four that share colour
    and pattern, so only the shape tells the captions apart."""
    batch: list[int] = []
    grouped = int(size * lookalike)
    while len(batch) < grouped:
        first = rng.randrange(n_images)
        batch += [first, *rng.sample(by_look[look_of[first]], 3)]
    batch = batch[:grouped]
    batch += [rng.randrange(n_images) for _ in range(size - len(batch))]
    return batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, help="a time budget instead of a step budget")
    parser.add_argument("--steps", type=int, default=4500, help="optimiser steps")
    parser.add_argument("--images", type=int, default=20000, help="pre-generated training images")
    parser.add_argument(
        "--sizes", default="96,128,192,256", help="drawing sizes (px), comma-separated"
    )
    parser.add_argument("--lookalike", type=float, default=0.25, help="share of look-alike groups")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch", type=int, default=16, help="ViT patch size (64 px input)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the loss step")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="tower arithmetic; auto: bf16 where the hardware has it (a step 20-25%% faster "
        "on an AVX512-BF16 CPU), else fp32",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--eval-n", type=int, default=400, help="evaluation images per split")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    started = time.perf_counter()

    tokenizer = build_tokenizer(vocabulary())
    vocab = tokenizer.get_vocab()
    model = make_model(len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"], args.patch)
    model.to(args.device)
    hold = held_out()
    train_products = [p for p in all_products() if p not in hold]

    print(f"generating {args.images} training images...", file=sys.stderr)
    labels = [rng.randrange(len(train_products)) for _ in range(args.images)]
    sizes = [int(x) for x in args.sizes.split(",")]
    pixels = training_images(train_products, labels, sizes, 10_000_000, args.workers)
    pixels = pixels.to(args.device)
    image_products = [train_products[lab] for lab in labels]
    image_codes = attribute_codes([vars(p) for p in image_products])
    look_of = [(p.colour, p.pattern) for p in image_products]
    by_look: dict[tuple[str, str], list[int]] = {}
    for i, look in enumerate(look_of):
        by_look.setdefault(look, []).append(i)
    print(f"data ready in {time.perf_counter() - started:.0f}s; training", file=sys.stderr)

    bank = CaptionBank(tokenizer, train_products)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and native_bf16(args.device))
    loss_fn = contrastive_loss(model, bf16)
    if args.compile:
        loss_fn = torch.compile(loss_fn)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    budget = args.minutes * 60 if args.minutes else None
    train_start = time.perf_counter()
    step = 0
    while True:
        elapsed = time.perf_counter() - train_start
        progress = elapsed / budget if budget else step / args.steps
        if progress >= 1:
            break
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimiser.param_groups:
            group["lr"] = lr
        batch = sample_batch(rng, args.images, args.batch, args.lookalike, by_look, look_of)
        images = pixels[batch]
        if rng.random() < 0.5:
            images = images.flip(-1)
        # Captions name all three attributes or only some; an image is a positive for every
        # caption it satisfies. Partial captions ("a photo of a dress") give the shape a
        # signal of its own instead of leaving it to ride on colour.
        facts = [partial_caption(image_products[i], rng) for i in batch]
        text, order = bank.plan([f[0] for f in facts])
        match = positives(image_codes[batch], attribute_codes([f[1] for f in facts]))
        loss, scale = loss_fn(
            images,
            [(ids.to(args.device), mask.to(args.device)) for ids, mask in text],
            order.to(args.device),
            match.to(args.device),
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0:
            print(
                f"step {step} loss {loss.item():.3f} scale {scale.item():.1f} lr {lr:.2e} t {elapsed:.0f}s",
                file=sys.stderr,
            )
        step += 1

    metrics: dict[str, object] = dict(evaluate(model, tokenizer, n=args.eval_n, seed=20_000_000))
    metrics.update(
        {
            "steps": step,
            "batch": args.batch,
            "train_images": args.images,
            "draw_sizes": sizes,
            "lookalike": args.lookalike,
            "threads": torch.get_num_threads(),
            "precision": "bf16" if bf16 else "fp32",
            "train_minutes": round((time.perf_counter() - train_start) / 60, 2),
            "total_minutes": round((time.perf_counter() - started) / 60, 2),
        }
    )
    print(json.dumps(metrics, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    model.cpu()
    model.save_pretrained(args.out)
    # Imported here: the PIL image processor is only needed to write the model folder.
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(args.out)
    (args.out / "training_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
