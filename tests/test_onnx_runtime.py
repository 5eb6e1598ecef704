"""ONNX Runtime towers against torch and the reference implementation, the export gate,
and the model identity each runtime writes into a collection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from demo.catalog import DEMO_MODEL
from demo.evaluate import zero_shot
from services import onnx_towers
from services.encoder import Encoder
from services.onnx_towers import InferenceRuntime
from services.settings import Settings
from tests.test_reference import (  # noqa: F401
    LABELS,
    TEMPLATE,
    _images,
    model_dirs,
    reference_features,
)


def test_onnx_fp32_equals_the_models_own_features(
    model_dirs: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    """CLIP, the hub's legacy layout and SigLIP (texts padded as trained), on real photos."""
    ours, theirs = model_dirs
    images = _images()
    texts = [TEMPLATE.format(label) for label in LABELS]
    want_text, want_image = reference_features(theirs, texts, images)
    encoder = Encoder(str(ours), batch_size=2, runtime="onnx", onnx_cache=tmp_path / "onnx")
    got_image = encoder.encode_images(images)
    assert encoder.runtime_active is InferenceRuntime.ONNX, encoder.runtime_note
    assert np.allclose(got_image, want_image, atol=1e-5)
    assert np.allclose(encoder.encode_texts(texts), want_text, atol=1e-5)
    # fp32 computes the same function: it shares torch's collections.
    torch_encoder = Encoder(str(ours), batch_size=2)
    assert encoder.identity == torch_encoder.identity
    # Preprocessed ahead (a pipeline's decode thread), then embedded: the same vectors,
    # on both runtimes.
    for runtime in (encoder, torch_encoder):
        inputs = runtime.preprocess_images(images)
        assert inputs is not None and len(inputs) == len(images)
        assert np.allclose(runtime.encode_preprocessed(inputs), want_image, atol=1e-5)


def test_int8_keeps_zero_shot_accuracy_and_gets_its_own_identity(tmp_path: Path) -> None:
    torch_encoder = Encoder(str(DEMO_MODEL), batch_size=64)
    int8 = Encoder(str(DEMO_MODEL), batch_size=64, runtime="onnx-int8", onnx_cache=tmp_path)
    int8.load()
    assert int8.runtime_active is InferenceRuntime.ONNX_INT8, int8.runtime_note
    want = zero_shot(torch_encoder, n=200, seed=41_000_000)
    got = zero_shot(int8, n=200, seed=41_000_000)
    for key, value in want.items():
        assert abs(got[key] - value) <= 0.01 + 1e-9, (key, got[key], value)  # 1 point
    assert int8.identity.model_id == torch_encoder.identity.model_id + "#int8"
    gates = json.loads(next(tmp_path.rglob("manifest.json")).read_text())["gates"]
    int8_gate = gates["onnx-int8@CPUExecutionProvider"]
    assert int8_gate["passed"] and int8_gate["top10_overlap"] >= 0.95
    # The encoder keeps what its gate measured (the benchmarks print it).
    assert int8.gate is not None and int8.gate.top10_overlap == int8_gate["top10_overlap"]
    assert torch_encoder.gate is None


def test_a_runtime_that_fails_its_gate_is_not_used(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No export reproduces torch exactly to cosine 1.01: both ONNX runtimes are refused,
    the encoder runs on torch and says why; the verdict is kept, so a restart does not
    export and gate again."""
    monkeypatch.setattr(onnx_towers, "FP32_MIN_COSINE", 1.01)
    encoder = Encoder(str(tiny_model_dir), runtime="onnx-int8", onnx_cache=tmp_path)
    vectors = encoder.encode_images(_images()[:2])
    assert encoder.runtime_active is InferenceRuntime.TORCH
    assert "differ from torch" in encoder.runtime_note
    assert np.allclose(vectors, Encoder(str(tiny_model_dir)).encode_images(_images()[:2]))
    manifest = next(tmp_path.rglob("manifest.json"))
    gates = json.loads(manifest.read_text())["gates"]
    assert gates["onnx@CPUExecutionProvider"]["passed"] is False
    exported = {f.name: f.stat().st_mtime_ns for f in manifest.parent.glob("*.onnx")}

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_towers, "_export", no_export)
    again = Encoder(str(tiny_model_dir), runtime="onnx", onnx_cache=tmp_path)
    again.load()
    assert again.runtime_active is InferenceRuntime.TORCH and "differ" in again.runtime_note
    assert {f.name: f.stat().st_mtime_ns for f in manifest.parent.glob("*.onnx")} == exported


def test_threads_share_the_cores_among_processes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from services import settings as settings_module

    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # a container limited to 1.5 CPUs
    assert settings_module._cgroup_cpus(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert settings_module._cgroup_cpus(cpu_max) is None
    monkeypatch.setattr(settings_module, "_cgroup_cpus", lambda: 4)
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)))
    assert Settings(processes=2).inference_threads == 2  # the quota, not the host's 16
    monkeypatch.setattr(settings_module, "_cgroup_cpus", lambda: None)
    assert Settings(processes=4).inference_threads == 4
    assert Settings(processes=32).inference_threads == 1
    assert Settings(processes=4, threads=3).inference_threads == 3
    monkeypatch.setenv("SIGHTLINE_RUNTIME", "onnx-int8")
    assert Settings().runtime == "onnx-int8"


def test_worker_sessions_do_not_spin_unless_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime's threads spin between operators for queries, and not in ingest
    workers, whose decode thread needs the cores; an explicit setting wins either way."""
    from services.runtime import build_encoder

    assert Settings().for_worker().spin is False
    monkeypatch.setenv("SIGHTLINE_SPIN", "true")
    assert Settings().for_worker().spin is True
    monkeypatch.delenv("SIGHTLINE_SPIN")

    def spinning(settings: Settings) -> set[str]:
        encoder = build_encoder(settings)
        encoder.load()
        towers = encoder._towers
        assert towers is not None and towers.text is not None
        return {
            session.get_session_options().get_session_config_entry(
                "session.intra_op.allow_spinning"
            )
            for session in (towers.image, towers.text)
        }

    base = Settings(model=str(DEMO_MODEL), runtime="onnx", onnx_cache=tmp_path / "onnx")
    assert spinning(base) == {"1"}
    assert spinning(base.for_worker()) == {"0"}
