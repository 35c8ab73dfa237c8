"""``ctv2v benchmark`` (inference rows, the runner, the command) and scripts/gpu_benchmark.sh at a
tiny size on the CPU: the rows are there and filled, bad arguments are one line and exit 2.

Only presence and consistency are checked, never timings (the machine is shared).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bundle.benchmark.inference import (
    BenchmarkArgumentError,
    parse_shape,
    parse_variant,
)
from bundle.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY_NETWORK = yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())["network"]


@pytest.fixture
def tiny_yaml(tmp_path) -> Path:
    """tests/tiny.yaml's networks with the recipe's fidelity path, slabs of 8 x 64 x 64."""
    path = tmp_path / "tiny_bench.yaml"
    path.write_text(yaml.safe_dump({"network": dict(TINY_NETWORK), "fidelity_channels": [8, 16, 16],
                                    "train_patch_size": [8, 64, 64]}))
    return path


def _positive(value) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def test_inference_rows_through_the_command(tiny_yaml, tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(["benchmark", "--sections", "inference", "--size", str(tiny_yaml), "--device", "cpu",
                 "--lengths", "8", "16", "--in-plane", "64", "--steps", "2",
                 "--variant", "steps=1", "strength=0.5", "image_overlap=2,16,16", "--json", str(out),
                 "--bundle-root", str(REPO)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| inference | enhance 16x64x64 | tiny_bench | fp32 | strength=0.5 |" in printed
    assert "parameters" in printed and "ratios:" in printed

    result = json.loads(out.read_text())
    assert result["complete"] is True
    assert result["parameters"]["tiny_bench"]["U-Net"] > 0
    matmul = [r for r in result["rows"] if r["section"] == "matmul"]
    assert len(matmul) == 1 and _positive(matmul[0]["flops_per_s"])
    rows = [r for r in result["rows"] if r["section"] == "inference"]
    plain = {r["name"]: r for r in rows if not r["variant"]}
    assert set(plain) == {"enhance 8x64x64", "enhance 16x64x64"}  # one row per length
    variants = {r["variant"]: r for r in rows if r["variant"]}
    assert set(variants) == {"steps=1", "strength=0.5", "image_overlap=2,16,16"}
    for row in rows:
        assert _positive(row["seconds"]) and _positive(row["peak_mib"]), row
        assert _positive(row["flops"]) and _positive(row["flops_per_s"]) and _positive(row["peak_ratio"]), row
        for key in ("encode s", "U-Net s/step", "decode s", "slabs", "s/slab"):
            assert _positive(row["extra"][key]), (key, row)
    assert plain["enhance 16x64x64"]["extra"]["slabs"] == pytest.approx(2.0)  # slab = 8 x 64 x 64 here
    for row in variants.values():  # against the plain fp32 output of the middle length
        assert row["name"] == "enhance 16x64x64"
        assert math.isfinite(row["hu_max"]) and math.isfinite(row["hu_mean"]) and row["hu_max"] >= row["hu_mean"] >= 0
    reference = plain["enhance 16x64x64"]["extra"]
    assert reference["steps"] == 2
    assert variants["strength=0.5"]["extra"]["U-Net calls"] * 2 == reference["U-Net calls"]
    assert variants["steps=1"]["extra"]["U-Net calls"] * 2 == reference["U-Net calls"]
    what = [r["what"] for r in result["ratios"]]
    assert any("strength=0.5 / plain seconds" in w for w in what)
    assert any("peak MiB largest / smallest" in w for w in what)


@pytest.mark.parametrize(("arguments", "expected"), [
    (["--size", "no_such_size.yaml"], "no_such_size.yaml"),
    (["--size", "demo", "--model", "missing/model.pt"], "missing/model.pt"),
    (["--size", "demo", "--variant", "no_such_setting=3"], "no_such_setting"),
    (["--size", "demo", "--variant", "image_overlap=2,16"], "image_overlap"),
    (["--size", "demo", "--lengths", "8x64"], "8x64"),
])
def test_bad_arguments_are_one_line_and_exit_2(arguments, expected, capsys):
    code = main(["benchmark", "--sections", "inference", "--device", "cpu", "--bundle-root", str(REPO), *arguments])
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], captured.err
    assert captured.out == ""


def test_variant_and_shape_parsing():
    assert parse_variant("steps=10").key == "num_inference_steps"
    assert parse_variant("image_tile=16,128,128").value == (16, 128, 128)
    assert parse_variant("residual=true").value is True
    assert parse_variant("bf16").kind == "precision"
    assert parse_variant("no_diffusion").kind == "no_diffusion"
    with pytest.raises(BenchmarkArgumentError, match="strength"):
        parse_variant("strength=2")
    assert parse_shape("32", 128) == (32, 128, 128)
    assert parse_shape("300x512x512", 128) == (300, 512, 512)


@pytest.mark.skipif(not shutil.which("bash") or not shutil.which("timeout"), reason="needs bash and timeout")
def test_gpu_script_runs_on_cpu_at_tiny_size(tiny_yaml, tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_BENCHMARK_STAGES": "inference volume"}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_benchmark.sh"), str(out), "--device", "cpu", "--size", str(tiny_yaml),
         "--precision", "fp32", "--lengths", "8", "--in-plane", "64", "--steps", "1", "--variant", "strength=1",
         "--threads", "1", "--no-warmup"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["complete"] is True
    assert [run["part"] for run in result["runs"]] == ["inference", "volume"]
    # the script's defaults were overridden by the arguments after OUT.json
    assert all(run["arguments"]["device"] == "cpu" and run["arguments"]["lengths"] == ["8x64x64"]
               for run in result["runs"])
    assert result["runs"][1]["arguments"]["settings"] == ["window_batch_size=32"]
    rows = [r for r in result["rows"] if r["section"] == "inference"]
    # each stage: the plain row and the variant the arguments gave instead of the script's
    assert [r["variant"] for r in rows] == ["", "strength=1", "", "strength=1"]
    assert all(r["seconds"] > 0 for r in rows)


def test_variants_that_cannot_run_are_notes(tiny_yaml, monkeypatch):
    """A failing torch.compile and fp16 on a CPU give rows that say why; no_diffusion runs no U-Net."""
    import torch

    from bundle.benchmark.inference import inference_rows
    from bundle.benchmark.sizes import load_size

    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no compiler\nhere")))
    spec = load_size(str(tiny_yaml), bundle_root=REPO)
    rows = inference_rows(spec, "cpu", lengths=(8,), in_plane=64, steps=1, warmup=False,
                          variants=("compile", "no_diffusion", "fp16"), log=lambda line: None)
    by_variant = {r.variant: r for r in rows}
    assert by_variant["compile"].extra["failed"] == "RuntimeError: no compiler"
    assert by_variant["fp16"].extra["skipped"] == "fp16 needs a CUDA device" and by_variant["fp16"].seconds is None
    no_diffusion = by_variant["no_diffusion"]
    assert no_diffusion.extra["U-Net calls"] == 0 and no_diffusion.seconds > 0
    assert math.isfinite(no_diffusion.hu_max)  # measured after the failed compile: the enhancer still runs


def test_merge_keeps_every_part_and_says_which_is_missing(tmp_path):
    from bundle.benchmark.merge import merge_results

    part = tmp_path / "inference.json"
    part.write_text(json.dumps({"machine": {"device": "cpu"}, "arguments": {"steps": 2}, "parameters": {"tiny": {}},
                                "rows": [{"section": "inference"}], "ratios": [], "notes": [], "complete": True}))
    merged = merge_results([part, tmp_path / "volume.json"], tmp_path / "all.json")
    assert json.loads((tmp_path / "all.json").read_text()) == merged
    assert merged["rows"] == [{"section": "inference"}] and merged["complete"] is False
    assert any("volume.json" in note for note in merged["notes"])
