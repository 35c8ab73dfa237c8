"""The training and peer rows of ``ctv2v benchmark`` at a tiny size: every row is there and filled.

Only presence and consistency are checked, never timings or ratios (the machine is shared).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from bundle.benchmark import training
from bundle.benchmark.peers import PEER_NAMES, peer_rows
from bundle.benchmark.sizes import load_size
from bundle.benchmark.training import STAGES, latent_cache_available, training_rows

REPO = Path(__file__).resolve().parents[2]
TINY_NETWORK = yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())["network"]


@pytest.fixture
def tiny_size(tmp_path):
    """tests/tiny.yaml's networks on a crop of 2 x 64 x 64 (the networks' in-plane factor is 8 and
    the U-Net's another 8 on the latent: 64 is the smallest side; the slice axis is never
    resampled, so 2 slices keep the test fast), batch 1, with the recipe's fidelity path."""
    path = tmp_path / "tiny_size.yaml"
    path.write_text(yaml.safe_dump({
        "network": dict(TINY_NETWORK),
        "train_patch_size": [2, 64, 64],
        "fidelity_channels": [8, 16, 16],
        "batch_size": 1,
    }))
    return load_size(str(path), bundle_root=REPO)


def _measured(row) -> None:
    assert "skipped" not in row.extra, row.extra
    assert row.seconds > 0 and row.flops > 0 and row.peak_mib > 0, row
    assert row.samples_per_s == pytest.approx(row.calls_per_s * 1)  # batch_size 1
    assert row.flops_per_s == pytest.approx(row.flops / row.seconds)


def test_training_rows(tiny_size, monkeypatch):
    monkeypatch.setattr(training._precision, "native_bf16", lambda device: False)
    # no compiler run in a unit test: a compile that fails must become a note, not a crash
    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no compiler\nhere")))
    rows = training_rows(tiny_size, "cpu", precisions=("fp32", "bf16"), iterations=1, warmup=0)
    rows += training_rows(tiny_size, "cpu", iterations=1, warmup=0, stages=("phase 2",),
                          variants=("grad checkpointing", "compile"))
    by_key = {(r.name, r.precision, r.variant): r for r in rows}
    assert all(r.section == "training" for r in rows)
    for stage in STAGES:
        row = by_key[(stage, "fp32", "")]
        if stage == "phase 1 (cached latents)" and not latent_cache_available():
            assert "skipped" in row.extra
        else:
            _measured(row)
        # bf16 on a CPU without native bf16: a skipped row, not a 200x slower measurement
        assert by_key[(stage, "bf16", "")].extra == {"skipped": "emulated bf16 on this CPU"}
        assert by_key[(stage, "bf16", "")].seconds is None
    checkpointed = by_key[("phase 2", "fp32", "grad checkpointing")]
    _measured(checkpointed)
    assert checkpointed.flops > by_key[("phase 2", "fp32", "")].flops  # the recomputed forward
    assert "time_vs_plain" in checkpointed.extra
    assert by_key[("phase 2", "fp32", "compile")].extra["skipped"] == "RuntimeError: no compiler"
    # the config the rows parsed is left as it was
    assert tiny_size.parser["network#gradient_checkpointing"] is False
    assert isinstance(tiny_size.parser["vae"], str)


def test_peer_rows(tiny_size):
    rows = peer_rows(tiny_size, "cpu", iterations=1, warmup=0)
    assert [r.name for r in rows] == list(PEER_NAMES)
    assert all(r.section == "peer" for r in rows)
    for row in rows:
        if "skipped" in row.extra:  # MONAI's attention blocks need einops, an optional dependency
            assert row.name == "MONAI DiffusionModelUNet fwd+bwd" and "einops" in row.extra["skipped"]
            continue
        _measured(row)
    assert "flops_per_s_vs_ours" in rows[1].extra
