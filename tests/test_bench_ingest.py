"""The ingest benchmark's accelerator path (device, float16, decode workers) runs on a CPU:
the code a GPU run takes, minus the GPU."""

from __future__ import annotations

import pytest

from bench import ingest


def test_end_to_end_with_decode_workers_runs_and_reports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--models", "tiny", "--images", "12", "--runtimes", "torch,onnx", "--repeat", "1"]
    assert ingest.main([*argv, "--device", "cpu", "--decode-workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "device cpu (fp32 for torch)" in out
    rows = [line.split() for line in out.splitlines() if "end to end, 2 decode workers" in line]
    assert [row[1] for row in rows] == ["torch", "onnx"]
    for row in rows:
        assert row[-5] == "12" and float(row[-3]) > 0  # images, images/s


def test_float16_needs_a_gpu() -> None:
    with pytest.raises(SystemExit) as exit_info:
        ingest.main(["--models", "tiny", "--precision", "fp16"])
    assert exit_info.value.code == 2


def test_decoding_stops_at_the_scale_that_covers_the_model_input() -> None:
    from bench.common import product_photos

    [data] = product_photos(1, seed=3)  # 640x480 JPEG
    assert min(ingest._decode(data, 224).size) == 240  # 1/2 scale: the smallest >= 224
    assert ingest._decode(data, 480).size == (640, 480)
