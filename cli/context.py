"""How a CLI command gets its runtime and who it acts as."""

from __future__ import annotations

import getpass
from pathlib import Path

import typer

from services.auth.principal import Principal, operator
from services.runtime import Runtime, build_runtime
from services.settings import Settings, load_settings
from workers.dispatch import dispatcher_for


def caller() -> Principal:
    """The local operator: whoever can run the CLI beside the data has full rights."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = "operator"
    return operator(user)


def build_local_runtime(settings: Settings | None = None) -> Runtime:
    """This process's runtime (Celery dispatcher when a broker is set), not yet opened:
    enough to resolve stored ids before paying for the model."""
    settings = settings or load_settings()
    return build_runtime(settings, dispatcher_for(settings))


def open_runtime(settings: Settings | None = None, load_model: bool = True) -> Runtime:
    """Build this process's runtime and open it (``load_model=False``: for commands that
    only read what is stored; see ``Runtime.open``)."""
    runtime = build_local_runtime(settings)
    runtime.open(load_model=load_model)
    return runtime


def finish_job(runtime: Runtime, job_id: str, timeout_s: float) -> dict[str, object]:
    """Wait for a job run in this process (no broker), then close the runtime; returns the
    job's state. With a broker the job runs on the workers and this reports it as queued."""
    runtime.wait_idle(timeout_s=timeout_s)
    data = runtime.jobs.get(caller(), job_id).as_dict()
    runtime.close()
    return data


def stored_id(runtime: Runtime, ref: str) -> str:
    """A stored image's full id from what was typed: the id or a unique prefix of at least
    6 hex digits (the results table prints 12). Something that looks like a path is a
    missing file, not an unknown id.

    Raises:
        typer.BadParameter: a path that does not exist.
        NotFound, InvalidInput: no image, or more than one, starts so.
    """
    if "/" in ref or "\\" in ref or Path(ref).suffix:
        raise typer.BadParameter(f"no such file: {ref}")
    return runtime.store.resolve(ref)
