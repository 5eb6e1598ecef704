"""``sightline backup``: take, list and restore whole-deployment backups.

No model is loaded: a backup reads and writes stored vectors, documents and records, so
it runs in seconds on a machine without the model, and restores into any deployment
(embedded or a Qdrant server) whatever model its settings name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from cli.context import caller
from cli.output import emit_json
from services.backup.service import BackupService, describe
from services.errors import IndexUnavailable
from services.runtime import Runtime, build_runtime
from services.settings import IndexBackend, load_settings
from services.storage.blobs import FileBlobs
from workers.dispatch import dispatcher_for

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
DestOpt = Annotated[
    Path | None,
    typer.Option(
        "--dest",
        help="A folder to keep backups in (default: the deployment's storage under "
        "backups/: DATA_DIR/backups, or the bucket's backups/ prefix).",
        file_okay=False,
    ),
]
backup_app = typer.Typer(
    help="Backups: every collection, the taxonomy, keys, accounts, the audit log and the "
    "image store's manifest.",
    no_args_is_help=True,
)


@contextlib.contextmanager
def _service(dest: Path | None) -> Iterator[tuple[Runtime, BackupService]]:
    """The runtime (not opened: no model) and its backup service, over ``dest`` if given."""
    settings = load_settings()
    runtime = build_runtime(settings, dispatcher_for(settings))
    service = runtime.backups if dest is None else runtime.backups.at(FileBlobs(dest))
    try:
        yield runtime, service
    except IndexUnavailable as e:
        if settings.index.backend is IndexBackend.EMBEDDED and "in use" in str(e):
            raise IndexUnavailable(
                f"the embedded index at {settings.index_path} is in use by another process: "
                "stop the service, then back up or restore (an embedded index admits one "
                "process, which is what makes its backup consistent)"
            ) from e
        raise
    finally:
        runtime.close()


def _progress(step: str) -> None:
    typer.echo(f"  {step}", err=True)


@backup_app.command("create")
def create(
    dest: DestOpt = None,
    name: Annotated[
        str | None, typer.Option(help="Default: the UTC time, 20261203T154500Z.")
    ] = None,
    images: Annotated[
        bool, typer.Option("--images", help="Copy the originals too (single-box deployments).")
    ] = False,
    engine_snapshots: Annotated[
        bool,
        typer.Option(
            "--qdrant-snapshots",
            help="Also have the Qdrant server snapshot each collection on its own storage.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Take a backup of the whole deployment."""
    with _service(dest) as (_, service):
        manifest = service.create(caller(), name, images, engine_snapshots, _progress)
    row = describe(manifest)
    if as_json:
        emit_json(row)
        return
    points = ", ".join(f"{k} {v}" for k, v in row["points"].items()) or "no collections"
    originals = ", ".join(f"{k} {v}" for k, v in row["originals"].items())
    typer.echo(f"backup {row['name']}: {points}; originals listed: {originals}")
    typer.echo(
        f"{row['bytes']:,} bytes"
        + ("" if row["includes_images"] else " (originals not copied: --images copies them)")
    )


@backup_app.command("list")
def list_(dest: DestOpt = None, as_json: JsonOpt = False) -> None:
    """Backups kept here, oldest first; incomplete ones (cut short) are marked."""
    with _service(dest) as (_, service):
        rows = [describe(m) for m in service.manifests(caller())]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        typer.echo("no backups")
    for row in rows:
        if not row["complete"]:
            typer.echo(f"{row['name']:<24}  incomplete (no manifest): not restorable")
            continue
        points = sum(row["points"].values())
        typer.echo(
            f"{row['name']:<24}  {row['created_at']}  {points:>9,} points  "
            f"{row['bytes']:>14,} bytes{'  +images' if row['includes_images'] else ''}"
        )


@backup_app.command("restore")
def restore(
    name: Annotated[str, typer.Argument(help="A backup's name (see `backup list`).")],
    dest: DestOpt = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace collections that hold points here.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore a backup (checked in full before anything changes)."""
    with _service(dest) as (_, service):
        report = service.restore(caller(), name, replace, _progress)
    data = report.as_dict()
    if as_json:
        emit_json(data)
        return
    points = ", ".join(f"{k} {v}" for k, v in report.collections.items()) or "no collections"
    typer.echo(f"restored {name}: {points}")
    typer.echo(
        f"keys {report.keys}, accounts {report.accounts}, audit events added "
        f"{report.audit_events_added}, taxonomy {'yes' if report.taxonomy else 'none'}"
    )
    if report.images_copied:
        typer.echo(f"originals copied back: {report.images_copied}")
    missing = sum(report.missing_originals.values())
    if missing:
        typer.echo(
            f"warning: {missing} originals the backup lists are not in the store "
            f"({report.missing_originals}); restore them from the bucket's versions or copy "
            "them back, or search shows images whose files are gone"
        )
    models = sorted(set(report.models.values()))
    if models:
        typer.echo(f"the collections were built with {', '.join(models)}: run with that model")
