"""Zero-shot tagging: taxonomy, label vectors, scoring, re-tag, OCR fusion, evaluation."""
