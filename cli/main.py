"""``sightline`` commands: ingest, search, similar, info."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, cast

import typer
from tqdm import tqdm

from cli import backup, moderation, tagging
from cli.context import build_local_runtime, caller, finish_job, open_runtime, stored_id
from cli.metadata import load_metadata, metadata_for
from cli.output import emit_json, hits_as_dicts, print_hits, print_job
from cli.remote import URL_ENV, Remote, RemoteError
from services.auth.principal import Role
from services.errors import ConfigError, SightlineError
from services.filters import parse_filters
from services.ids import is_image_id
from services.ingest.indexer import ItemResult, Outcome
from services.ingest.intake import IngestItem
from services.runtime import build_access
from services.settings import load_settings

app = typer.Typer(
    help="Sightline: semantic image search over your catalog.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
KOpt = Annotated[int, typer.Option("-k", "--top-k", min=1, max=1000, help="Number of results.")]
WhereOpt = Annotated[
    list[str] | None,
    typer.Option("--where", "-w", help="Filter: key=value, key=a|b, key!=v, key<=n, key>=n."),
]
GroupOpt = Annotated[
    str | None, typer.Option("--one-per", help="At most one hit per value of this field.")
]


# Files that sit beside catalog images and are never images: skipped inside folders
# (a file named on the command line is still tried, and refused if it is not an image).
NOT_IMAGES = frozenset(
    {
        ".csv",
        ".tsv",
        ".json",
        ".jsonl",
        ".ndjson",
        ".txt",
        ".md",
        ".yaml",
        ".yml",
        ".xml",
        ".html",
        ".pdf",
        ".zip",
        ".db",
        ".sqlite",
        ".log",
        ".py",
        ".sh",
    }
)


def _walk(paths: list[Path], skipped: list[Path] | None = None) -> Iterator[tuple[Path, Path]]:
    """(file, root) for every non-hidden file under the given files and folders, sorted;
    metadata and other non-image files inside folders go to ``skipped``."""
    for root in paths:
        if root.is_file():
            yield root, root.parent
        elif root.is_dir():
            for f in sorted(root.rglob("*")):
                rel = f.relative_to(root).parts
                if not f.is_file() or any(part.startswith(".") for part in rel):
                    continue
                if f.suffix.lower() in NOT_IMAGES:
                    if skipped is not None:
                        skipped.append(f)
                    continue
                yield f, root
        else:
            raise typer.BadParameter(f"{root}: no such file or folder")


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Image files and folders.")],
    metadata: Annotated[
        Path | None, typer.Option("--metadata", "-m", help="CSV or JSONL keyed by filename.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Index images (folders recursively). Exit status 1 if any item failed."""
    table = load_metadata(metadata) if metadata else {}
    not_images: list[Path] = []
    files = list(_walk(paths, not_images))
    if not_images:
        names = ", ".join(f.name for f in not_images[:5]) + (" …" if len(not_images) > 5 else "")
        typer.echo(f"skipped {len(not_images)} non-image file(s): {names}", err=True)
    if (remote := Remote.from_env()) is not None:
        _ingest_remote(remote, files, table, as_json)
        return
    runtime = open_runtime()
    limit = runtime.settings.images.max_bytes

    def items() -> Iterator[IngestItem]:
        for f, root in files:
            # Oversized files are refused by size before being read into memory.
            data = f.read_bytes() if f.stat().st_size <= limit else b"\0" * (limit + 1)
            yield IngestItem(data=data, filename=str(f), metadata=metadata_for(table, f, root))

    results: list[ItemResult] = []
    with tqdm(total=len(files), unit="img", disable=as_json, file=sys.stderr) as bar:
        for result in runtime.ingestor.iter_ingest(caller(), items()):
            results.append(result)
            bar.update(1)
    runtime.close()
    counts = {o.value: sum(r.outcome is o for r in results) for o in Outcome}
    if as_json:
        emit_json(
            {
                "summary": counts,
                "results": [
                    {
                        "file": r.filename,
                        "outcome": r.outcome.value,
                        "image_id": r.image_id,
                        "reason": r.reason,
                    }
                    for r in results
                ],
            }
        )
    else:
        for r in results:
            if r.outcome in (Outcome.FAILED, Outcome.SKIPPED):
                typer.echo(f"{r.outcome.value:>8}  {r.filename}: {r.reason}")
        typer.echo(
            f"indexed {counts['indexed']}, updated {counts['updated']}, "
            f"skipped {counts['skipped']}, failed {counts['failed']}"
        )
    if counts["failed"]:
        raise typer.Exit(1)


def _ingest_remote(
    remote: Remote, files: list[tuple[Path, Path]], table: Any, as_json: bool
) -> None:
    """Upload through the API; the service's workers index, ``sightline job`` follows."""
    per_file = {str(f): metadata_for(table, f, root) for f, root in files}
    receipts = list(remote.upload([f for f, _ in files], per_file))
    refused = [r for receipt in receipts for r in receipt["refused"]]
    accepted = sum(len(receipt["accepted"]) for receipt in receipts)
    jobs = [receipt["job_id"] for receipt in receipts if receipt.get("job_id")]
    if as_json:
        emit_json({"accepted": accepted, "refused": refused, "jobs": jobs})
    else:
        for r in refused:
            typer.echo(f"  refused  {r.get('filename')}: {r.get('message')}")
        typer.echo(f"uploaded {accepted}, refused {len(refused)}; jobs: {' '.join(jobs) or '-'}")
    if refused:
        raise typer.Exit(1)


def _warn(warnings: list[str]) -> None:
    """Filter warnings on stderr, so that ``--json`` output stays one document."""
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)


def _query_params(k: int, where: list[str] | None, one_per: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"k": k, "where": where or []}
    if one_per:
        params["one_per"] = one_per
    return params


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="What to look for, in words.")],
    k: KOpt = 10,
    where: WhereOpt = None,
    one_per: GroupOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Images matching a text query."""
    flt = parse_filters(where or [])
    if (remote := Remote.from_env()) is not None:
        hits = remote.hits("/search", {"q": text, **_query_params(k, where, one_per)})
        emit_json(hits_as_dicts(hits)) if as_json else print_hits(hits)
        return
    runtime = open_runtime()
    hits = runtime.search.text(caller(), text, k=k, flt=flt, group_by=one_per)
    _warn(runtime.search.unknown_fields(caller(), flt))
    runtime.close()
    emit_json(hits_as_dicts(hits)) if as_json else print_hits(hits)


@app.command()
def similar(
    ref: Annotated[str, typer.Argument(help="A stored image id, or an image file.")],
    k: KOpt = 10,
    where: WhereOpt = None,
    one_per: GroupOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Images most like a stored image or a file (the image itself is left out)."""
    flt = parse_filters(where or [])
    path = Path(ref)
    if (remote := Remote.from_env()) is not None:
        params = _query_params(k, where, one_per)
        if path.is_file():
            hits = remote.hits("/search/image", params, files={"file": path.read_bytes()})
        elif is_image_id(ref):
            hits = remote.hits(f"/images/{ref}/similar", params)
        else:
            raise typer.BadParameter(f"{ref!r} is neither a file nor an image id (64 hex digits)")
        emit_json(hits_as_dicts(hits)) if as_json else print_hits(hits)
        return
    runtime = build_local_runtime()
    if path.is_file():
        runtime.open()
        hits = runtime.search.by_image(caller(), path.read_bytes(), k=k, flt=flt, group_by=one_per)
    else:
        # A stored image's neighbours come from its stored vector: no model to load, and a
        # mistyped id is refused before anything is.
        image_id = stored_id(runtime, ref)
        runtime.open(load_model=False)
        hits = runtime.search.similar(caller(), image_id, k=k, flt=flt, group_by=one_per)
    _warn(runtime.search.unknown_fields(caller(), flt))
    runtime.close()
    emit_json(hits_as_dicts(hits)) if as_json else print_hits(hits)


@app.command()
def info(as_json: JsonOpt = False) -> None:
    """Model, collections and their sizes."""
    if (remote := Remote.from_env()) is not None:
        served = {"url": remote.base, **remote.call("GET", "/info")}
        if as_json:
            emit_json(served)
        else:
            for key, value in served.items():
                typer.echo(f"{key:<14} {value}")
        return
    runtime = open_runtime()
    identity = runtime.encoder.identity
    data: dict[str, Any] = {
        "model": runtime.settings.model,
        "text_model": runtime.settings.text_model,
        "model_id": identity.model_id,
        "vector_size": identity.size,
        "distance": identity.distance,
        "family": runtime.encoder.family.value,
        "runtime": runtime.encoder.runtime_active.value,
        "runtime_note": runtime.encoder.runtime_note or None,
        "threads": runtime.settings.inference_threads,
        "logit_scale": round(runtime.encoder.logit_scale, 4),
        "logit_bias": runtime.encoder.logit_bias,
        "index_backend": runtime.settings.index.backend.value,
        "collections": {name: runtime.index.count(name) for name in runtime.collections.all()},
    }
    runtime.close()
    if as_json:
        emit_json(data)
        return
    for key, value in data.items():
        if key != "collections":
            typer.echo(f"{key:>14}: {value}")
    for name, count in data["collections"].items():
        typer.echo(f"{'collection':>14}: {name} ({count} points)")


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """Well-known models: family, vector size, languages and relative speed."""
    from services.model_presets import PRESETS

    if as_json:
        emit_json([p.as_dict() for p in PRESETS])
        return
    typer.echo(f"{'model':<40} {'family':<9} {'dim':>4} {'speed':>5}  languages")
    for p in PRESETS:
        typer.echo(
            f"{p.model:<40} {p.family:<9} {p.vector_size:>4} {p.relative_speed:>5.2f}  "
            f"{p.languages}"
        )
        if p.text_model:
            typer.echo(f"{'':<4}+ SIGHTLINE_TEXT_MODEL={p.text_model}")
        if p.note:
            typer.echo(f"{'':<4}{p.note}")
    typer.echo("speed: image encodes per ViT-B/32 encode, from the models' compute (a guide)")


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume.")] = "ingest,jobs",
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    pool: Annotated[str, typer.Option(help="prefork, solo or threads.")] = "prefork",
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
) -> None:
    """Run a Celery worker (needs SIGHTLINE_QUEUE__BROKER_URL).

    Consumers of the ingest queue prefetch one batch (SIGHTLINE_QUEUE__BATCH_SIZE) so they
    can embed in batches; with late acknowledgement a killed worker's reserved messages
    are redelivered. Other queues prefetch one message.
    """
    import os

    from services.jobs.kinds import INGEST_QUEUE

    settings = load_settings()
    if not settings.queue.broker:
        raise ConfigError("a worker needs SIGHTLINE_QUEUE__BROKER_URL (a redis:// URL)")
    names = [q.strip() for q in queues.split(",") if q.strip()]
    # Each child (prefork) or thread (threads pool) may encode at once: share the cores
    # among them (SIGHTLINE_THREADS or SIGHTLINE_PROCESSES set by hand win).
    os.environ.setdefault("SIGHTLINE_PROCESSES", str(1 if pool == "solo" else concurrency))
    prefetch = settings.ingest_batch_size if INGEST_QUEUE in names else 1
    # The worker is Celery's own program over workers.celery_app (which reads the same
    # settings from the environment); exec keeps this process id for supervisors.
    argv = [
        sys.executable,
        "-m",
        "celery",
        "--app=workers.celery_app",
        "worker",
        f"--queues={','.join(names)}",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--loglevel={loglevel}",
        f"--prefetch-multiplier={prefetch}",
        "--without-gossip",
        "--without-mingle",
    ]
    os.execv(sys.executable, argv)


@app.command()
def job(
    job_id: Annotated[str, typer.Argument(help="A job id from an upload or bulk command.")],
    retry: Annotated[bool, typer.Option("--retry", help="Re-queue the failed items.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """State and counts of a job, its failed items with reasons; --retry re-queues them."""
    if (remote := Remote.from_env()) is not None:
        if retry:
            remote.call("POST", f"/jobs/{job_id}/retry")
        data = remote.call("GET", f"/jobs/{job_id}")
        if as_json:
            emit_json(data)
            return
        typer.echo(f"job {data['id']} ({data['kind']}): {data['state']}, {data['counts']}")
        for item in data["failed_items"]:
            typer.echo(f"  failed  {item['item']}: {item['reason']}")
        return
    runtime = open_runtime(load_model=retry)  # a retry embeds; a look does not
    retried = runtime.uploads.retry_failed(caller(), job_id) if retry else 0
    data = {
        **runtime.jobs.get(caller(), job_id).as_dict(),
        "failed_items": runtime.jobs.failed_items(caller(), job_id),
        "in_flight": runtime.jobs.in_flight(caller(), job_id),
        "retried": retried,
    }
    runtime.close()
    if as_json:
        emit_json(data)
        return
    typer.echo(f"job {data['id']} ({data['kind']}): {data['state']}, {data['counts']}")
    flight = data["in_flight"]
    if flight["processing"]:
        typer.echo(
            f"  {flight['processing']} processing, the oldest for {flight['oldest_s']:.0f} s; "
            f"if its worker died, the broker delivers it again after the visibility timeout "
            f"({flight['visibility_timeout_s']} s): in about {flight['redelivered_in_s']:.0f} s"
        )
    for item in data["failed_items"]:
        typer.echo(f"  failed  {item['item']}: {item['reason']}")
    if retry:
        typer.echo(f"re-queued {retried} items")


@app.command()
def reembed(
    model: Annotated[str, typer.Option("--model", help="The new model (name or directory).")],
    prefix: Annotated[str, typer.Option("--prefix", help="Collection prefix for the new set.")],
    switch: Annotated[bool, typer.Option(help="Switch to the new collections when done.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Re-embed every image with another model into new collections, then switch to them.

    With a broker this queues a job (see `sightline job`); embedded, it runs here. After
    the switch, processes must run with SIGHTLINE_MODEL set to the new model.
    """
    runtime = open_runtime()
    job_id = runtime.uploads.reembed(caller(), model, prefix, switch)
    print_job(finish_job(runtime, job_id, timeout_s=24 * 3600), as_json)


@app.command()
def delete(
    image_ids: Annotated[
        list[str], typer.Argument(help="Image ids (sha256, or unique prefixes) to delete.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Delete images from the index, the store and the thumbnails (a job; audited)."""
    runtime = open_runtime()
    job_id = runtime.uploads.delete(caller(), [stored_id(runtime, ref) for ref in image_ids])
    print_job(finish_job(runtime, job_id, timeout_s=600), as_json)


@app.command()
def reconcile(as_json: JsonOpt = False) -> None:
    """Re-queue stored images that have no point in the index, and finish jobs whose
    publishing broke off (e.g. after a crash or a broker outage)."""
    runtime = open_runtime()
    job_id, n = runtime.uploads.reconcile(caller())
    runtime.wait_idle(timeout_s=3600)
    runtime.close()
    if as_json:
        emit_json({"job_id": job_id, "queued": n})
    else:
        typer.echo(
            f"{n} stored images had no point; queued as job {job_id}" if n else "index complete"
        )


dead_app = typer.Typer(
    help="Messages no worker could parse: list, replay (after a fix), drop.",
    no_args_is_help=True,
)
app.add_typer(dead_app, name="dead-letters")


@dead_app.command("list")
def dead_list(
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100, as_json: JsonOpt = False
) -> None:
    """Dead letters, newest first, with why each was refused."""
    runtime = open_runtime(load_model=False)
    letters = [d.as_dict() for d in runtime.jobs.dead_letters(caller(), limit)]
    runtime.close()
    if as_json:
        emit_json(letters)
        return
    for d in letters:
        typer.echo(f"{d['id']}  {d['at']}  {d['kind']}: {d['reason']}")
    if not letters:
        typer.echo("no dead letters")


@dead_app.command("replay")
def dead_replay(letter_id: Annotated[str, typer.Argument(help="A dead letter's id.")]) -> None:
    """Publish a dead letter's message again (after the cause was fixed)."""
    runtime = open_runtime()
    letter = runtime.jobs.replay_dead_letter(caller(), letter_id)
    runtime.wait_idle(timeout_s=600)
    runtime.close()
    typer.echo(f"replayed {letter.id} ({letter.kind})")


@dead_app.command("drop")
def dead_drop(letter_id: Annotated[str, typer.Argument(help="A dead letter's id.")]) -> None:
    """Remove a dead letter for good."""
    runtime = open_runtime(load_model=False)
    letter = runtime.jobs.drop_dead_letter(caller(), letter_id)
    runtime.close()
    typer.echo(f"dropped {letter.id}")


app.add_typer(tagging.taxonomy_app, name="taxonomy")
app.add_typer(moderation.moderation_app, name="moderation")
app.add_typer(backup.backup_app, name="backup")
app.command("tag")(tagging.tag)
app.command("retag")(tagging.retag)
app.command("eval")(tagging.evaluate)

admin_app = typer.Typer(
    help="Dashboard accounts: create, list, role, delete.", no_args_is_help=True
)
app.add_typer(admin_app, name="admin")


@admin_app.command("create")
def admin_create(
    username: Annotated[str, typer.Argument(help="Login name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    role: Annotated[
        Role | None,
        typer.Option(help="viewer, moderator or admin (new accounts: admin; resets keep theirs)."),
    ] = None,
) -> None:
    """Create (or reset the password of) a dashboard account."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    account = build_access(load_settings()).create_account(caller(), username, password, role)
    typer.echo(f"{account.role} account {account.username!r} ready; log in at /admin")


@admin_app.command("list")
def admin_list() -> None:
    """Dashboard accounts and their roles."""
    for account in build_access(load_settings()).accounts_list(caller()):
        typer.echo(f"{account.username}\t{account.role}")


@admin_app.command("role")
def admin_role(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[Role, typer.Argument(help="viewer, moderator or admin.")],
) -> None:
    """Change an account's role (open sessions follow at once)."""
    account = build_access(load_settings()).set_role(caller(), username, role)
    typer.echo(f"{account.username!r} is now a {account.role}")


@admin_app.command("delete")
def admin_delete(username: Annotated[str, typer.Argument(help="Login name.")]) -> None:
    """Remove an account and end its sessions."""
    build_access(load_settings()).delete_account(caller(), username)
    typer.echo(f"deleted account {username!r}")


keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for.")],
    scope: Annotated[
        list[str], typer.Option("--scope", "-s", help="search, ingest or admin (repeatable).")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Create a key; its token is printed once and stored only as a hash."""
    from services.auth.principal import Scope

    try:
        scopes = [Scope(s) for s in scope]
    except ValueError as e:
        raise typer.BadParameter(f"{e}; scopes are search, ingest, admin") from e
    key, token = build_access(load_settings()).create_key(caller(), name, scopes)
    if as_json:
        emit_json({**key.as_dict(), "token": token})
    else:
        typer.echo(f"created key {key.id} ({', '.join(sorted(s.value for s in key.scopes))})")
        typer.echo(f"token (shown once): {token}")


@keys_app.command("list")
def keys_list(as_json: JsonOpt = False) -> None:
    """Every key (no secrets)."""
    keys = [k.as_dict() for k in build_access(load_settings()).list_keys(caller())]
    if as_json:
        emit_json(keys)
        return
    for k in keys:
        state = "revoked" if k["revoked"] else "active"
        typer.echo(f"{k['id']}  {state:<7}  {','.join(k['scopes']):<20}  {k['name']}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id.")]) -> None:
    """Revoke a key at once."""
    build_access(load_settings()).revoke_key(caller(), key_id)
    typer.echo(f"revoked {key_id}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """Serve the API with a threaded development server (production: gunicorn, see infra/)."""
    from werkzeug.serving import run_simple

    from web.app import create_app

    flask_app = create_app(load_settings())
    typer.echo(f"Sightline on http://{host}:{port}  (API under /api/v1, docs /api/v1/openapi.json)")
    run_simple(host, port, flask_app, threaded=True, use_reloader=False)


def _cli_command() -> str:
    """How to run this CLI from the current folder: ``sightline`` when it is on PATH, else
    the clone's wrapper (``./sightline``), which a fresh clone has and PATH does not."""
    import shutil

    on_path = shutil.which("sightline")
    if on_path and Path(on_path).resolve() == Path(sys.argv[0]).resolve():
        return "sightline"
    wrapper = Path(__file__).resolve().parent.parent / "sightline"
    if wrapper.is_file():
        rel = os.path.relpath(wrapper)
        return rel if "/" in rel else f"./{rel}"
    return "sightline"


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    products: Annotated[int, typer.Option(min=1, help="Products in the sample catalog.")] = 500,
    serve_: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the web service.")
    ] = True,
) -> None:
    """Offline demo: a generated catalog, indexed with the bundled demo model, served on HTTP.

    Uses the small CLIP this project trains on synthetic products (a demo and test asset,
    not a production model). Data goes to SIGHTLINE_DATA_DIR (default data/demo).
    """
    import secrets

    from demo.catalog import DEMO_MODEL, catalog_items, flagged_copies, flagged_examples
    from demo.taxonomy import demo_taxonomy
    from services.auth.principal import Scope
    from web.app import create_app

    data_dir = os.environ.get("SIGHTLINE_DATA_DIR", "data/demo")
    settings = load_settings(data_dir=data_dir, model=str(DEMO_MODEL))
    typer.echo(
        f"DEMO MODEL in use: {DEMO_MODEL.name} (trained here on synthetic products; not a production model)"
    )
    runtime = open_runtime(settings)
    me = caller()
    taxonomy = demo_taxonomy()
    if runtime.tagging.taxonomy(me) != taxonomy:
        # An older demo catalog is re-tagged.
        has_images = bool(runtime.index.count(runtime.collections.images))
        runtime.tagging.replace(me, taxonomy, retag=has_images)
    if not runtime.moderation.entries(me):
        for data, category, note in flagged_examples():
            # The demo model puts any two photos of its small world close together, so its
            # entries carry a stricter threshold than the real-CLIP default (bench/moderation.py).
            runtime.moderation.add_image(me, data, category, threshold=0.99, note=note, scan=False)
    items = [*catalog_items(products), *flagged_copies()]
    with tqdm(total=len(items), unit="img", desc="indexing demo catalog", file=sys.stderr) as bar:
        report = runtime.ingestor.ingest(me, items, on_result=lambda _: bar.update(1))
    summary = report.summary()
    typer.echo(
        f"catalog: {products} products, {len(items)} photos "
        f"(indexed {summary['indexed']}, already there {summary['skipped']}, failed {summary['failed']}); "
        f"{runtime.moderation.pending(me)} quarantined for review (copies of the demo flagged set)"
    )
    _, token = runtime.access.create_key(me, "demo-admin", [Scope.ADMIN])
    password = secrets.token_urlsafe(12)
    runtime.access.create_account(me, "admin", password)
    base = f"http://{host}:{port}"
    typer.echo(
        f"""
Dashboard: {base}/admin  (user admin, password {password})
The CLI against this server (no second model, no index lock), in another shell:
  export SIGHTLINE_URL={base} SIGHTLINE_API_KEY={token}
  {_cli_command()} search "red striped dress" -k 5
Try (API key for this demo: {token}):
  export TOKEN={token}
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/search?q=red+striped+dress&k=5"
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/search?q=dress&where=price<40&one_per=product_id"
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/images/<image_id>/similar?k=5"
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/search?q=dress&colour=red&pattern=striped"
  curl -s -H "Authorization: Bearer $TOKEN" -F file=@some-photo.jpg "{base}/api/v1/tag"
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/taxonomy?format=yaml"
  curl -s -H "Authorization: Bearer $TOKEN" "{base}/api/v1/moderation/queue"
  open {base}/api/v1/openapi.json for every endpoint; Ctrl-C stops the server.
"""
    )
    if not serve_:
        runtime.close()
        return
    from werkzeug.serving import run_simple

    flask_app = create_app(settings, runtime=runtime)
    typer.echo(f"Sightline demo on {base}")
    run_simple(host, port, flask_app, threaded=True, use_reloader=False)


def _fail(code: str, message: str, status: int = 2) -> NoReturn:
    """One error: a line on stderr, or with ``--json`` a JSON document on stdout (what a
    script reads) in the API's error shape."""
    if "--json" in sys.argv[1:]:
        emit_json({"error": {"code": code, "message": message}})
    else:
        typer.echo(
            f"error: {message}" if code != "config_error" else f"configuration error: {message}",
            err=True,
        )
    sys.exit(status)


def main() -> None:
    """Entry point: domain errors become a one-line message (JSON under ``--json``) and
    exit status 2; usage errors too."""
    try:
        status = app(standalone_mode=False)
    except ConfigError as e:
        _fail("config_error", str(e))
    except SightlineError as e:
        _fail(e.code, str(e))
    except RemoteError as e:
        _fail("remote_error", f"from {os.environ.get(URL_ENV)}: {e}")
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except typer.TyperException as e:  # usage: a missing argument, no such file, ...
        if "--json" in sys.argv[1:]:
            _fail("usage_error", e.format_message(), e.exit_code)
        cast(Any, e).show()  # click's usage message and hint
        sys.exit(e.exit_code)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
