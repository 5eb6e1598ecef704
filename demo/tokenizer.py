"""A CLIP tokenizer whose merges make each demo-vocabulary word a single token.

CLIP's real BPE vocabulary would work too, but its 49k-row embedding table would be most
of a small model's weights; the demo vocabulary needs a few hundred tokens.
"""

from __future__ import annotations

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode


def build_tokenizer(words: list[str]) -> CLIPTokenizer:
    """Byte-level base vocabulary plus whole-word merges for ``words``."""
    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in sorted(set(words)):
        symbols = [*word[:-1], word[-1] + "</w>"]
        current = symbols[0]
        for nxt in symbols[1:]:
            pair = (current, nxt)
            current = current + nxt
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            vocab.setdefault(current, len(vocab))
    vocab.setdefault("<|startoftext|>", len(vocab))
    vocab.setdefault("<|endoftext|>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=24)  # type: ignore[arg-type]
