"""``sightline moderation``: the flagged set, checks and the review queue from a shell.

Each command works locally (the operator's runtime) and in remote mode (the API with
``SIGHTLINE_API_KEY``'s rights), and prints the same JSON shape either way under
``--json``, so a trust-and-safety script does not care where it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.context import caller, finish_job, open_runtime, stored_id
from cli.output import emit_json
from cli.remote import Remote
from services.moderation.review import Decision

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
moderation_app = typer.Typer(
    help="Moderation: flag images or concepts, check images, review the quarantine.",
    no_args_is_help=True,
)


def _image_ref(ref: str) -> Path | None:
    """A file to read, or None when ``ref`` is a stored image id (checked before any model
    loads: a path that does not exist is 'no such file')."""
    path = Path(ref)
    if path.is_file():
        return path
    if "/" in ref or "\\" in ref or path.suffix:
        raise typer.BadParameter(f"no such file: {ref}")
    return None


def _print_matches(matches: list[dict[str, Any]]) -> None:
    """One line per match: which signal fired, and each signal's score (reviewers see why)."""
    for m in matches:
        extra = ", ".join(
            f"{k} {m[k]}"
            for k in ("phash_distance", "layout", "keypoints", "keypoint_agreement")
            if m.get(k) is not None
        )
        typer.echo(
            f"  {m['entry_id'][:8]}  {m['category']:<12} {m.get('signal', '?'):<16} "
            f"cosine {m['score']:.4f} (threshold {m['threshold']:.3f})  {extra}"
        )


@moderation_app.command("check")
def check(
    ref: Annotated[str, typer.Argument(help="An image file, or a stored image id.")],
    as_json: JsonOpt = False,
) -> None:
    """Check an image against the flagged set without storing it; exit status 1 when it
    would be quarantined."""
    path = _image_ref(ref)
    if (remote := Remote.from_env()) is not None:
        if path is not None:
            files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
            verdict = remote.call("POST", "/moderate", files=files)
        else:
            verdict = remote.call("POST", "/moderate", json={"image_id": ref})
    else:
        runtime = open_runtime()
        if path is not None:
            verdict = runtime.moderation.check_bytes(caller(), path.read_bytes())
        else:
            verdict = runtime.moderation.check(caller(), stored_id(runtime, ref), None)
        runtime.close()
    if as_json:
        emit_json(verdict)
    else:
        typer.echo(
            f"{verdict['verdict']}"
            + (f" ({verdict['category']})" if verdict.get("category") else "")
        )
        _print_matches(verdict.get("matches") or [])
    if verdict["verdict"] != "clear":
        raise typer.Exit(1)


@moderation_app.command("flag")
def flag(
    ref: Annotated[
        str | None, typer.Argument(help="An image file or stored image id to flag.")
    ] = None,
    text: Annotated[
        str | None, typer.Option("--text", help='A concept instead: "a photo of a weapon".')
    ] = None,
    category: Annotated[str, typer.Option("--category", "-c", help="e.g. weapons.")] = "",
    threshold: Annotated[
        float | None, typer.Option(min=-1.0, max=1.0, help="Cosine that quarantines.")
    ] = None,
    note: Annotated[str, typer.Option(help="Why (kept in the audit log).")] = "",
    scan: Annotated[bool, typer.Option(help="Re-check the catalog against it.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Add a flagged entry from an image or a text concept."""
    if (ref is None) == (text is None):
        raise typer.BadParameter("give an image (file or id) or --text, not both")
    if not category.strip():
        raise typer.BadParameter("--category is required")
    path = _image_ref(ref) if ref is not None else None
    if (remote := Remote.from_env()) is not None:
        fields: dict[str, Any] = {"category": category, "note": note, "scan": scan}
        if threshold is not None:
            fields["threshold"] = threshold
        if path is not None:
            files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
            form = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
            data = remote.call("POST", "/flagged", files=files, data=form)
        else:
            source = {"text": text} if text is not None else {"image_id": ref}
            data = remote.call("POST", "/flagged", json={**fields, **source})
    else:
        runtime = open_runtime()
        moderation, me = runtime.moderation, caller()
        if text is not None:
            entry, job_id = moderation.add_text(me, text, category, threshold, note, scan)
        else:
            if path is not None:
                image, source_name = path.read_bytes(), "upload"
            else:
                image_id = stored_id(runtime, str(ref))
                image, source_name = moderation.image_bytes(me, image_id, None), image_id
            entry, job_id = moderation.add_image(
                me, image, category, source_name, threshold, note, scan
            )
        data = {"entry": entry.as_dict(), "scan_job_id": job_id}
        if job_id is not None:
            data["scan"] = finish_job(runtime, job_id, timeout_s=24 * 3600)
        else:
            runtime.close()
    if as_json:
        emit_json(data)
        return
    entry_out = data["entry"]
    typer.echo(f"flagged {entry_out['kind']} entry {entry_out['id']} ({entry_out['category']})")
    if data.get("scan_job_id"):
        typer.echo(f"scan job {data['scan_job_id']}")


@moderation_app.command("flagged")
def flagged(as_json: JsonOpt = False) -> None:
    """The flagged set, oldest first."""
    if (remote := Remote.from_env()) is not None:
        entries = remote.call("GET", "/flagged")["entries"]
    else:
        runtime = open_runtime(load_model=False)
        entries = [e.as_dict() for e in runtime.moderation.entries(caller())]
        runtime.close()
    if as_json:
        emit_json(entries)
        return
    if not entries:
        typer.echo("the flagged set is empty")
    for e in entries:
        threshold = "default" if e["threshold"] is None else f"{e['threshold']:.3f}"
        typer.echo(f"{e['id']}  {e['kind']:<5}  {e['category']:<12}  {threshold:>7}  {e['note']}")


@moderation_app.command("unflag")
def unflag(entry_id: Annotated[str, typer.Argument(help="A flagged entry's id.")]) -> None:
    """Remove a flagged entry (images it quarantined wait for review all the same)."""
    if (remote := Remote.from_env()) is not None:
        entry = remote.call("DELETE", f"/flagged/{entry_id}")
    else:
        runtime = open_runtime()
        entry = runtime.moderation.remove(caller(), entry_id).as_dict()
        runtime.close()
    typer.echo(f"removed {entry['id']} ({entry['category']})")


@moderation_app.command("queue")
def queue(
    limit: Annotated[int, typer.Option(min=1, max=500, help="Items to show.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Quarantined images waiting for review, with what each matched."""
    if (remote := Remote.from_env()) is not None:
        data = remote.call("GET", "/moderation/queue", params={"limit": limit})
    else:
        runtime = open_runtime(load_model=False)
        records, nxt = runtime.moderation.queue(caller(), limit)
        items = [
            {
                "image_id": r.payload["image_id"],
                "payload": r.payload,
                "matches": (r.payload.get("moderation") or {}).get("matches", []),
            }
            for r in records
        ]
        data = {"pending": runtime.moderation.pending(caller()), "items": items, "next_offset": nxt}
        runtime.close()
    if as_json:
        emit_json(data)
        return
    typer.echo(f"{data['pending']} waiting for review")
    for item in data["items"]:
        name = item["payload"].get("filename") or ""
        typer.echo(f"{item['image_id'][:12]}  {name}")
        _print_matches(item["matches"])


def _decide(action: Decision, refs: list[str], reason: str | None, flag_it: bool) -> None:
    if (remote := Remote.from_env()) is not None:
        body = {"image_ids": refs, "action": action.value, "reason": reason}
        results = remote.call(
            "POST", "/moderation/decisions", json={**body, "add_to_flagged": flag_it}
        )["results"]
    else:
        runtime = open_runtime()
        try:
            ids = [stored_id(runtime, r) for r in refs]
            done = runtime.moderation.decide(caller(), ids, action, reason, flag_it)
        finally:
            runtime.close()
        results = [r.as_dict() for r in done]
    for r in results:
        typer.echo(f"{'ok' if r['ok'] else 'not done':<8}  {r['image_id'][:12]}  {r['message']}")
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


IdsArg = Annotated[list[str], typer.Argument(help="Image ids (or unique prefixes, locally).")]
ReasonOpt = Annotated[str | None, typer.Option(help="Why (kept in the audit log).")]


@moderation_app.command("approve")
def approve(image_ids: IdsArg, reason: ReasonOpt = None) -> None:
    """Release quarantined images into search."""
    _decide(Decision.APPROVE, image_ids, reason, False)


@moderation_app.command("reject")
def reject(
    image_ids: IdsArg,
    reason: ReasonOpt = None,
    add_to_flagged: Annotated[
        bool, typer.Option("--add-to-flagged", help="Flag each rejected image too.")
    ] = False,
) -> None:
    """Remove quarantined images from the catalog for good."""
    _decide(Decision.REJECT, image_ids, reason, add_to_flagged)


@moderation_app.command("audit")
def audit(
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    target: Annotated[str | None, typer.Option(help="Only events about this id.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The audit log, newest first."""
    if (remote := Remote.from_env()) is not None:
        params: dict[str, Any] = {"limit": limit, **({"target": target} if target else {})}
        events = remote.call("GET", "/moderation/audit", params=params)["events"]
    else:
        runtime = open_runtime(load_model=False)
        events = [e.as_dict() for e in runtime.moderation.audit_log(caller(), limit, target)]
        runtime.close()
    if as_json:
        emit_json(events)
        return
    for e in events:
        typer.echo(f"{e['at']}  {e['actor']:<20}  {e['action']:<18}  {e['target']}")
