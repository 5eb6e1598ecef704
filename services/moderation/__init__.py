"""Moderation: the flagged set and its signals (embedding, hashes, layout), the review queue."""
