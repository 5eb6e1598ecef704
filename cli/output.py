"""Printing for people (aligned text) and for scripts (JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import typer

from services.search.service import SearchHit


def emit_json(data: Any) -> None:
    """One JSON document on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str))


def hits_as_dicts(hits: Sequence[SearchHit]) -> list[dict[str, Any]]:
    """Hits in their JSON form."""
    return [
        {"rank": n, "image_id": h.image_id, "score": round(h.score, 6), "payload": h.payload}
        for n, h in enumerate(hits, 1)
    ]


def print_hits(hits: Sequence[SearchHit]) -> None:
    """A ranked table: rank, score, short id, filename and title when present."""
    if not hits:
        typer.echo("no results")
        return
    typer.echo(f"{'#':>3}  {'score':>7}  {'image id':<12}  file / title")
    for n, h in enumerate(hits, 1):
        label = h.payload.get("title") or h.payload.get("filename") or ""
        typer.echo(f"{n:>3}  {h.score:>7.4f}  {h.image_id[:12]:<12}  {label}")


def print_job(data: dict[str, Any], as_json: bool) -> None:
    """A job's state and counts; exit status 1 when it failed."""
    if as_json:
        emit_json(data)
    else:
        typer.echo(f"job {data['id']}: {data['state']} {data['counts']}")
    if data["state"] == "failed":
        raise typer.Exit(1)
