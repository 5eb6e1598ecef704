"""``sightline taxonomy|tag|retag|eval``: zero-shot tagging from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.context import caller, finish_job, open_runtime, stored_id
from cli.output import emit_json, print_job
from cli.remote import Remote
from services.settings import load_settings
from services.tagging.taxonomy import Taxonomy, parse_taxonomy

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
taxonomy_app = typer.Typer(help="The tagging taxonomy: load, show, export.", no_args_is_help=True)


@taxonomy_app.command("load")
def taxonomy_load(
    path: Annotated[Path, typer.Argument(help="Taxonomy YAML file.", exists=True, dir_okay=False)],
    retag: Annotated[bool, typer.Option(help="Re-tag the catalog afterwards.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Replace the taxonomy (every process sees it), then re-tag the catalog."""
    taxonomy = parse_taxonomy(path.read_text())
    if (remote := Remote.from_env()) is not None:
        data = remote.call(
            "PUT",
            "/taxonomy",
            params={"retag": str(retag).lower()},
            json=taxonomy.model_dump(mode="json"),
        )
        if as_json:
            emit_json(data)
        else:
            typer.echo(f"taxonomy {data['version']}: {len(taxonomy.dimensions)} dimensions loaded")
        return
    runtime = open_runtime()
    version, job_id = runtime.tagging.replace(caller(), taxonomy, retag=retag)
    job = finish_job(runtime, job_id, timeout_s=24 * 3600) if job_id else None
    if job is None:
        runtime.close()
    if as_json:
        emit_json({"version": version, "retag": job})
        return
    typer.echo(f"taxonomy {version}: {len(taxonomy.dimensions)} dimensions loaded")
    if job is not None:
        typer.echo(f"re-tag job {job['id']}: {job['state']} {job['counts']}")


def _stored_taxonomy() -> Taxonomy:
    """The current taxonomy; exit status 1 when none is loaded."""
    if (remote := Remote.from_env()) is not None:
        return parse_taxonomy(remote.call("GET", "/taxonomy", params={"format": "yaml"}))
    runtime = open_runtime(load_model=False)
    taxonomy = runtime.tagging.taxonomy(caller())
    runtime.close()
    if taxonomy is None:
        typer.echo("no taxonomy is loaded", err=True)
        raise typer.Exit(1)
    return taxonomy


@taxonomy_app.command("show")
def taxonomy_show(as_json: JsonOpt = False) -> None:
    """Print the current taxonomy as YAML (or JSON)."""
    taxonomy = _stored_taxonomy()
    if as_json:
        emit_json({"version": taxonomy.version, "taxonomy": taxonomy.model_dump(mode="json")})
    else:
        typer.echo(f"# version {taxonomy.version}\n{taxonomy.to_yaml()}", nl=False)


@taxonomy_app.command("export")
def taxonomy_export(
    path: Annotated[Path, typer.Argument(help="Where to write the YAML.")],
) -> None:
    """Write the current taxonomy to a YAML file (loadable again with `taxonomy load`)."""
    taxonomy = _stored_taxonomy()
    path.write_text(taxonomy.to_yaml())
    typer.echo(f"wrote {path} (version {taxonomy.version})")


def tag(
    ref: Annotated[str, typer.Argument(help="An image file, or a stored image id.")],
    labels: Annotated[
        str | None, typer.Option("--labels", help="Comma-separated ad-hoc labels.")
    ] = None,
    template: Annotated[
        str, typer.Option("--template", help="Prompt per ad-hoc label; {} is the label.")
    ] = "This is a photo of {}.",
    multi_label: Annotated[bool, typer.Option("--multi-label")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Tag one image with the taxonomy or with ad-hoc labels."""
    options: dict[str, Any] = {
        "candidate_labels": labels.split(",") if labels else None,
        "hypothesis_template": template,
        "multi_label": multi_label,
    }
    path = Path(ref)
    if (remote := Remote.from_env()) is not None:
        data = _tag_remote(remote, path, ref, options)
    else:
        runtime = open_runtime()
        if path.is_file():
            result = runtime.tagging.tag_bytes(caller(), path.read_bytes(), **options)
        else:
            result = runtime.tagging.tag_stored(caller(), stored_id(runtime, ref), **options)
        runtime.close()
        data = result.as_dict()
    if as_json:
        emit_json(data)
        return
    if data.get("ocr_text"):
        typer.echo(f"text read: {data['ocr_text']}")
    for dim in data["dimensions"]:
        best = ", ".join(f"{x['label']} {x['score']:.3f}" for x in dim["labels"][:5])
        typer.echo(f"{dim['name']:<12} assigned: {', '.join(dim['assigned']) or '-':<20} {best}")


def _tag_remote(remote: Remote, path: Path, ref: str, options: dict[str, Any]) -> Any:
    if path.is_file():
        form = {
            "hypothesis_template": options["hypothesis_template"],
            "multi_label": str(options["multi_label"]).lower(),
        }
        if options["candidate_labels"]:
            form["candidate_labels"] = ",".join(options["candidate_labels"])
        return remote.call("POST", "/tag", files={"file": path.read_bytes()}, data=form)
    body = {k: v for k, v in options.items() if v is not None}
    return remote.call("POST", "/tag", json={"image_id": ref, **body})


def retag(as_json: JsonOpt = False) -> None:
    """Re-tag every image with the current taxonomy (a job; runs here when embedded)."""
    runtime = open_runtime()
    job_id = runtime.tagging.retag(caller())
    print_job(finish_job(runtime, job_id, timeout_s=24 * 3600), as_json)


def evaluate(
    dataset: Annotated[
        Path,
        typer.Argument(
            help="A folder per class, a CSV of path,label, or a CSV of caption,path (retrieval).",
            exists=True,
        ),
    ],
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Model to compare (repeatable).")
    ] = None,
    templates: Annotated[
        list[str] | None,
        typer.Option(
            "--prompts",
            help="A prompt set: templates separated by '|', {label} is the class (repeatable).",
        ),
    ] = None,
    ocr: Annotated[bool, typer.Option("--ocr", help="Also run each set with OCR fusion.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("eval-report"),
    as_json: JsonOpt = False,
) -> None:
    """Measure zero-shot classification (top-1/5, per-class precision/recall, confusion
    matrix) or text-to-image retrieval (recall@1/5/10); compares models x prompt sets."""
    from services.encoder import Encoder
    from services.tagging.evaluation import (
        Config,
        classify,
        is_retrieval_csv,
        load_classification,
        load_retrieval,
        markdown,
        retrieve,
        write_reports,
    )
    from services.tagging.ocr import RapidOcrReader

    settings = load_settings()
    models = model or [settings.model]
    prompt_sets = [tuple(t.strip() for t in p.split("|") if t.strip()) for p in templates or []]
    configs = [
        Config(m, p, with_ocr) if p else Config(m, ocr=with_ocr)
        for m in models
        for p in (prompt_sets or [()])
        for with_ocr in ([False, True] if ocr else [False])
    ]
    encoders = {
        m: Encoder(m, device=settings.device, batch_size=settings.batch_size) for m in models
    }
    reader = RapidOcrReader() if ocr else None
    classification, retrieval = [], []
    if is_retrieval_csv(dataset):
        pairs = load_retrieval(dataset)
        retrieval = [
            retrieve(encoders[c.model], pairs, c, settings.images) for c in configs if not c.ocr
        ]
    else:
        items = load_classification(dataset)
        classification = [
            classify(encoders[c.model], items, c, reader, settings.images) for c in configs
        ]
    data = write_reports(out, classification, retrieval)
    if as_json:
        emit_json(data)
    else:
        typer.echo(markdown(classification, retrieval), nl=False)
        typer.echo(f"reports in {out}/ (report.json, report.md, confusion PNGs)")
