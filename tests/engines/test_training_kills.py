"""Training killed with SIGKILL, then re-run: the same model.pt as an uninterrupted run.

Real processes (``python -m monai.bundle run training`` on the tiny recipe) die by SIGKILL at
points drawn from a seed among every file the run saves (VAE-stage and diffusion checkpoints,
``vae_final.pt``, the exported ``model.pt``), half-way through writing that file: the hardest
moment, when a non-atomic write would leave a truncated file that looks complete. The re-run must
resume from the newest complete checkpoint and end with bit-identical weights.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.engines.test_distributed import REPO, tiny_config

# Runs the recipe with torch.save instrumented: KILL_AT_SAVE=k kills the process (SIGKILL, no
# clean-up of any kind) after writing half of the k-th saved file; 0 counts the saves and prints them.
DRIVER = """
import io, os, signal, sys
import torch
import monai.bundle

kill_at, count, real_save = int(os.environ["KILL_AT_SAVE"]), 0, torch.save

def save(obj, f, *args, **kwargs):
    global count
    count += 1
    if count == kill_at:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if hasattr(f, "write"):
            f.write(data)
            f.flush()
        else:
            with open(f, "wb") as handle:
                handle.write(data)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
monai.bundle.run("training", config_file=sys.argv[1:])
print(f"SAVES {count}", flush=True)
"""


def train(config: Path, kill_at: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "KILL_AT_SAVE": str(kill_at),
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", DRIVER, str(REPO / "configs" / "train.yaml"), str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def kill_points(saves: int) -> list[int]:
    """The second save (inside the VAE stage), one drawn from a seed among the rest (the VAE stage's
    end, phase 1, phase 2), and the last one (the export of model.pt)."""
    return [2, random.Random(0).randrange(3, saves), saves]


def test_killed_anywhere_then_rerun_gives_the_same_model(tiny_overrides, tmp_path):
    overrides = {**tiny_overrides, "val_interval": 100}  # validation does not touch the weights
    config, out = tiny_config(tmp_path, overrides, "uninterrupted", batch_size=1)
    result = train(config, kill_at=0)  # the reference, counting the files it saves
    assert result.returncode == 0, result.stderr[-3000:]
    saves = int(result.stdout.split("SAVES ")[-1].split()[0])
    expected = weights(out / "model.pt")
    assert saves >= 6  # checkpoints of both stages, vae_final.pt, model.pt

    survived = []
    for kill_at in kill_points(saves):
        config, out = tiny_config(tmp_path, overrides, f"killed_at_{kill_at}", batch_size=1)
        killed = train(config, kill_at)
        assert killed.returncode == -signal.SIGKILL, f"save {kill_at}: {killed.stderr[-2000:]}"
        assert not (out / "model.pt").exists(), "a half-written model.pt looks complete"
        rerun = train(config, kill_at=0)
        assert rerun.returncode == 0, f"re-run after a kill at save {kill_at}:\n{rerun.stderr[-3000:]}"
        got = weights(out / "model.pt")
        assert got.keys() == expected.keys()
        different = [k for k in expected if torch.is_tensor(expected[k]) and not torch.equal(expected[k], got[k])]
        assert not different, f"kill at save {kill_at}: {len(different)} tensors differ, e.g. {different[:3]}"
        survived.append(kill_at)
    print(f"{len(survived)} kill points of {saves} saves survived: {survived}")
