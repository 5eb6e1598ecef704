"""Build a tiny CLIP-architecture model on disk: real code paths, no download, random weights.

sentence-transformers loads it exactly as it loads a real Hugging Face CLIP directory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil


def byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-level base vocabulary with its special tokens (no merges)."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def build_tiny_clip(
    path: Path,
    seed: int = 0,
    projection_dim: int = 16,
    image_size: int = 32,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    patch_size: int = 8,
    vision_heads: int = 2,
    vision_intermediate: int | None = None,
    text_hidden: int = 32,
    text_layers: int = 2,
    text_heads: int = 2,
) -> Path:
    """Save a randomly initialised tiny CLIPModel with tokenizer and processor at ``path``."""
    vocab = byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": text_hidden,
            "intermediate_size": 4 * text_hidden if text_hidden > 32 else 64,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": vision_hidden,
            "intermediate_size": vision_intermediate or 2 * vision_hidden,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": vision_heads,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(path)
    return path


def build_tiny_siglip(
    path: Path, seed: int = 0, logit_scale: float = 12.0, logit_bias: float = -3.5
) -> Path:
    """A tiny SiglipModel with a known temperature and bias (what the sigmoid must use)."""
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    vocab = byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    eos = vocab["<|endoftext|>"]
    config = SiglipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
    )
    torch.manual_seed(seed)
    model = SiglipModel(config)
    with torch.no_grad():
        model.logit_scale.fill_(float(torch.tensor(logit_scale).log()))
        model.logit_bias.fill_(logit_bias)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(path)
    return path


def build_tiny_text_model(path: Path, dim: int, seed: int = 0) -> Path:
    """A tiny text-only sentence-transformers model (BERT, mean pooling, a projection to
    ``dim``): stands in for a multilingual text model trained into an image model's
    space (clip-ViT-B-32-multilingual-v1), with no download."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters)]
    raw = path / "transformer"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(raw / "vocab.txt"))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    modules = [
        Transformer(str(raw)),
        Pooling(32, "mean"),
        Dense(32, dim, activation_function=torch.nn.Identity()),
    ]
    out = path / "model"
    SentenceTransformer(modules=modules).save(str(out))
    return out
