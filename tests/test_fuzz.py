"""schemathesis against the app's own OpenAPI document, in process: thousands of generated
requests, valid and invalid, with an admin key and a search key. None may get a 5xx, and
every response must match the status codes and schemas the document declares."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.auth.principal import Scope
from services.encoder import Encoder
from services.ingest.intake import IngestItem
from services.settings import Settings
from services.tagging.taxonomy import parse_taxonomy
from tests.api_fixtures import make_app, runtime_of
from tests.conftest import ADMIN, png_bytes

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 25  # per operation, key, generation mode and path-parameter choice
MIN_CASES = 2000


@pytest.fixture(scope="module")
def fuzzed_app(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, encoder: Encoder
) -> Iterator[tuple[Flask, dict[str, str], dict[str, str]]]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz") / "data", model=str(tiny_model_dir), batch_size=4
    )
    settings.web.rate_limit = "1000000/minute"  # the fuzzer is one client sending thousands
    app = make_app(settings, encoder)
    rt = runtime_of(app)
    rt.tagging.replace(
        ADMIN, parse_taxonomy("dimensions: [{name: colour, labels: [red, blue]}]"), retag=False
    )
    report = rt.ingestor.ingest(
        ADMIN, [IngestItem(png_bytes(i), f"{i}.png", {"title": f"t{i}"}) for i in range(6)]
    )
    entry, _ = rt.moderation.add_text(ADMIN, "a photo of a weapon", "weapons", scan=False)
    job = rt.uploads.ingest_stored(ADMIN, [report.results[0].image_id or ""])
    assert rt.wait_idle(60)
    tokens = {
        scope.value: rt.access.create_key(ADMIN, scope.value, [scope])[1]
        for scope in (Scope.ADMIN, Scope.SEARCH)
    }
    real = {"image_id": str(report.results[1].image_id), "job_id": job, "entry_id": entry.id}
    yield app, tokens, real
    rt.close()


def test_generated_requests_get_no_5xx_and_match_the_schema(
    fuzzed_app: tuple[Flask, dict[str, str], dict[str, str]],
) -> None:
    app, tokens, real = fuzzed_app
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    failures: dict[tuple[str, ...], str] = {}
    statuses: collections.Counter[int] = collections.Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        names = {p.name for p in operation.path_parameters}
        fixed: list[dict[str, Any] | None] = [None]
        if names:
            fixed.append({n: real[n] for n in names if n in real})
        for key, token in tokens.items():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                for path_parameters in fixed:
                    strategy = operation.as_strategy(
                        generation_mode=mode,
                        path_parameters=path_parameters,
                        headers={"Authorization": f"Bearer {token}"},  # auth: test_policy
                    )
                    _run(strategy, statuses, failures, (operation.label, key, mode.value))
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert sum(statuses.values()) >= MIN_CASES
    assert statuses[200] + statuses[201] + statuses[202] >= 200  # the fuzzer got through too
    assert not [s for s in statuses if s >= 500]


def _run(
    strategy: Any,
    statuses: collections.Counter[int],
    failures: dict[tuple[str, ...], str],
    label: tuple[str, ...],
) -> None:
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run: a red CI is reproducible
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call()
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseException as e:  # schemathesis raises an exception group of failures
            failures.setdefault((*label, type(e).__name__), f"{case.as_curl_command()}\n{e}")

    with contextlib.suppress(Unsatisfiable):  # nothing left to negate once the key is fixed
        check()
