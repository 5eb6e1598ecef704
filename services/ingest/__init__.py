"""Uploads in, points out: intake checks, uploads, events, the worker pipeline, URL fetch, re-embed."""
