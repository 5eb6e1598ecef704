"""Train the demo CLIP on generated product photos, on CPU, in a few minutes.

    .venv/bin/python -m demo.train [--minutes 8] [--out models/sightline-demo-clip]

Contrastive (CLIP) training with soft targets: two images of the same category x colour x
pattern in a batch are both positives for either caption. About 10% of the combinations
(``demo.synth.held_out``) are never shown, to measure generalisation to unseen combinations.
"""

from __future__ import annotations

import argparse
import json
import math
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
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from demo.synth import (
    CATEGORIES,
    COLOURS,
    PATTERNS,
    Product,
    all_products,
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


def draw(product: Product, seed: int) -> Image.Image:
    """A training image: drawn at 96 px, downsampled with the processor's bicubic filter."""
    return render(product, seed, size=DRAW).resize((IMAGE, IMAGE), Image.Resampling.BICUBIC)


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


def make_model(vocab_size: int, bos: int, eos: int, patch: int = 16) -> CLIPModel:
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
    return CLIPModel(config)


def evaluate(model: CLIPModel, tokenizer, n: int, seed: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Zero-shot top-1 per attribute over all 320 canonical captions, seen and held-out."""
    products = all_products()
    prompts = tokenizer([p.caption for p in products], padding=True, return_tensors="pt")
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
            images = to_tensor([draw(p, seed + i) for i, p in enumerate(truth)])
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    parser.add_argument("--images", type=int, default=24000, help="pre-generated training images")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch", type=int, default=16, help="ViT patch size (64 px input)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    started = time.perf_counter()

    tokenizer = build_tokenizer(vocabulary())
    vocab = tokenizer.get_vocab()
    model = make_model(len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"], args.patch)
    hold = held_out()
    train_products = [p for p in all_products() if p not in hold]

    print(f"generating {args.images} training images...", file=sys.stderr)
    labels = [rng.randrange(len(train_products)) for _ in range(args.images)]
    pixels = to_tensor([draw(train_products[lab], 10_000_000 + i) for i, lab in enumerate(labels)])
    label_t = torch.tensor(labels)
    print(f"data ready in {time.perf_counter() - started:.0f}s; training", file=sys.stderr)

    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    budget = args.minutes * 60
    train_start = time.perf_counter()
    step = 0
    while (elapsed := time.perf_counter() - train_start) < budget:
        progress = elapsed / budget
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimiser.param_groups:
            group["lr"] = lr
        batch = torch.randint(0, args.images, (args.batch,))
        images = pixels[batch]
        if rng.random() < 0.5:
            images = images.flip(-1)
        lab = label_t[batch]
        # Captions name all three attributes or only some; an image is a positive for every
        # caption it satisfies. Partial captions ("a photo of a dress") give the shape a
        # signal of its own instead of leaving it to ride on colour.
        products_b = [train_products[int(x)] for x in lab]
        facts = [partial_caption(p, rng) for p in products_b]
        tokens = tokenizer([f[0] for f in facts], padding=True, return_tensors="pt")
        img = F.normalize(model.get_image_features(pixel_values=images).pooler_output, dim=-1)
        txt = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        match = torch.tensor(
            [
                [float(all(getattr(p, k) == v for k, v in f[1].items())) for f in facts]
                for p in products_b
            ]
        )
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T
        image_targets = match / match.sum(dim=1, keepdim=True)
        text_targets = match.T / match.T.sum(dim=1, keepdim=True)
        loss = (
            F.cross_entropy(logits, image_targets) + F.cross_entropy(logits.T, text_targets)
        ) / 2
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0:
            print(
                f"step {step} loss {loss.item():.3f} scale {scale.item():.1f} lr {lr:.2e} t {elapsed:.0f}s",
                file=sys.stderr,
            )
        step += 1

    metrics = evaluate(model, tokenizer, n=400, seed=20_000_000)
    metrics.update(
        {
            "steps": step,
            "batch": args.batch,
            "train_images": args.images,
            "train_minutes": round((time.perf_counter() - train_start) / 60, 2),
            "total_minutes": round((time.perf_counter() - started) / 60, 2),
        }
    )
    print(json.dumps(metrics, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
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
