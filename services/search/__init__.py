"""Search: text, similar, by image and recommend, shaped by what the caller may see."""
