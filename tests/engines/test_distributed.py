"""Multi-process training as users launch it: torchrun, gloo on CPU, 2 processes, the tiny recipe.

``configs/multi_gpu_train.yaml`` over ``configs/train.yaml``: the run goes through the VAE stage,
phase 1 and phase 2 and exports ``model.pt``; the trainers check at the end of each stage that
every rank holds the same weights (the run fails otherwise); 2 processes of batch 1 end where 1
process of batch 2 ends; and a 2-process run resumed from an older checkpoint ends with the same
weights as the uninterrupted one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.engines.conftest import REPO

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")

CONFIGS = REPO / "configs"


def tiny_config(tmp_path: Path, tiny_overrides: dict, name: str, batch_size: int) -> tuple[Path, Path]:
    """The engine tests' tiny recipe as an override file; returns (file, its output dir)."""
    out = tmp_path / name
    config = {
        **tiny_overrides,
        "output_dir": str(out),
        "model_path": str(out / "model.pt"),
        "batch_size": batch_size,
        "samples_per_volume": 2,      # 2 volumes x 2 crops = 4 samples: 2 global batches of 2 per epoch
        "fidelity_channels": [8, 16, 16],
        "path_sample_epochs": 1,      # the optional stage on the U-Net's samples, under DDP too
        "path_sample_steps": 2,
        "redcnn_path": str(out / "no_redcnn.pt"),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, out


def run(configs: list[Path], processes: int) -> subprocess.CompletedProcess:
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "monai.bundle", "run", "training",
               "--config_file", files]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"training failed ({processes} processes):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def weights(model_file: Path) -> dict[str, torch.Tensor]:
    state = torch.load(model_file, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}


def test_two_processes_train_all_stages_like_one_process_of_the_global_batch(tiny_overrides, tmp_path):
    two, out_two = tiny_config(tmp_path, tiny_overrides, "two", batch_size=1)
    result = run([CONFIGS / "train.yaml", two, CONFIGS / "multi_gpu_train.yaml"], processes=2)
    log = result.stdout + result.stderr
    # every stage ended with the same weights on both ranks (the trainers check it)
    assert "weights identical on all 2 ranks: vae" in log
    assert "weights identical on all 2 ranks: unet, vae" in log  # phase 2 trains both
    assert "weights identical on all 2 ranks: fidelity" in log  # the path on the U-Net's samples
    assert "phase 2 at epoch 2" in log
    assert (out_two / "model.pt").is_file() and (out_two / "checkpoints" / "vae_final.pt").is_file()
    one, out_one = tiny_config(tmp_path, tiny_overrides, "one", batch_size=2)
    run([CONFIGS / "train.yaml", one], processes=1)
    # rank 0 alone logs: as many TensorBoard streams as one process writes
    streams = [len(list((out / "tensorboard").glob("events.*"))) for out in (out_two, out_one)]
    assert streams[0] == streams[1] > 0, streams
    a, b = weights(out_two / "model.pt"), weights(out_one / "model.pt")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    # the same samples, noise and timesteps; only the order of floating-point sums differs, which
    # Adam amplifies where a gradient is near its eps: measured 1.8e-6 on an AVX2 CPU and 3.8e-5 on
    # an AVX512 one (other oneDNN kernels, the code before and after issue 16 alike). Each rank
    # drawing its own noise instead (the bug this guards against) measured 5e-3
    assert worst <= 2e-4, f"2 x batch 1 vs 1 x batch 2: max weight difference {worst:.3g}"
    print(f"2 processes x batch 1 vs 1 x batch 2: max weight difference {worst:.3g}")

    # resume: forget the newest diffusion checkpoint and the model; the re-run resumes from the
    # older checkpoint (mid phase 2) on both ranks and ends with the same weights
    first = weights(out_two / "model.pt")
    checkpoints = sorted((out_two / "checkpoints").glob("diffusion_checkpoint_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert len(checkpoints) == 2
    checkpoints[-1].unlink()
    (out_two / "model.pt").unlink()
    result = run([CONFIGS / "train.yaml", two, CONFIGS / "multi_gpu_train.yaml"], processes=2)
    assert "resumed diffusion at iteration 3" in result.stdout + result.stderr
    resumed = weights(out_two / "model.pt")
    assert all(torch.equal(first[k], resumed[k]) for k in first), "the resumed 2-process run ended elsewhere"
    shutil.rmtree(out_two, ignore_errors=True)


def test_multi_gpu_config_without_torchrun_says_how_to_launch(tmp_path, tiny_overrides):
    config, _ = tiny_config(tmp_path, tiny_overrides, "plain", batch_size=1)
    files = f"['{CONFIGS / 'train.yaml'}','{config}','{CONFIGS / 'multi_gpu_train.yaml'}']"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", files],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode != 0
    assert "launch with torchrun" in result.stderr


def test_ranks_that_see_different_files_stop_with_a_message(tmp_path, tiny_overrides):
    # rank 0's output_dir holds a finished VAE stage, rank 1's is empty (machines without a shared
    # filesystem): one would skip the stage and the other train it, and the collectives would hang
    done, out = tiny_config(tmp_path, tiny_overrides, "rank0", batch_size=1)
    run([CONFIGS / "train.yaml", done], processes=1)
    assert (out / "checkpoints" / "vae_final.pt").is_file()
    split = tmp_path / "split.yaml"
    split.write_text(yaml.safe_dump({"output_dir": f"$'{tmp_path}/rank' + os.environ['RANK']"}))
    files = "[" + ",".join(f"'{c}'" for c in (CONFIGS / "train.yaml", done, split, CONFIGS / "multi_gpu_train.yaml")) + "]"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
               "run", "training", "--config_file", files]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode != 0
    assert "the ranks see different" in result.stdout + result.stderr
    assert "shared filesystem" in result.stdout + result.stderr
