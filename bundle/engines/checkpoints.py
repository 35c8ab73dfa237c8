"""Finding and loading the training checkpoints that ignite's ``Checkpoint`` handler writes.

Checkpoints are written by ``ignite.handlers.Checkpoint`` with an atomic ``DiskSaver`` as
``<prefix>_checkpoint_<iteration>.pt``; the newest one is the one with the largest iteration.
"""

from __future__ import annotations

import re
from pathlib import Path

from ignite.handlers import Checkpoint, DiskSaver

from bundle.utils.model_files import ModelFileError, describe_contents, load_weights


def latest_checkpoint(ckpt_dir: str | Path, prefix: str) -> Path | None:
    """The checkpoint with the highest iteration in ``ckpt_dir``, or None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := pattern.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a training checkpoint: tensors and plain values only (``weights_only``); a missing,
    truncated or foreign file is a one-line :class:`~bundle.utils.model_files.ModelFileError`."""
    state = load_weights(path, map_location=map_location, what="checkpoint")
    if not isinstance(state, dict):
        raise ModelFileError(path, f"not a training checkpoint ({describe_contents(state)})", "checkpoint")
    return state


def make_checkpoint_handler(to_save: dict, ckpt_dir: str | Path, prefix: str, n_saved: int = 2) -> Checkpoint:
    """An ignite ``Checkpoint`` writing atomically, named by the global iteration."""
    return Checkpoint(
        to_save,
        DiskSaver(str(ckpt_dir), require_empty=False, atomic=True, create_dir=True),
        filename_prefix=prefix,
        n_saved=n_saved,
        global_step_transform=lambda engine, _: engine.state.iteration,
    )
