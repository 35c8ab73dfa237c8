"""The training recipe's settings checked together before anything is built (configs/train.yaml's
``settings_check``, the first step of its run list): the ones that only meet each other late."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from bundle.data.datalist import load_datalist
from bundle.diffusion.schedule import PREDICTION_TYPES
from bundle.engines.sampled_latent_stage import LATENTS
from bundle.utils.validation import (
    SettingError,
    _is_int,
    check_bool,
    check_choice,
    check_patch_size,
    check_steps,
)

__all__ = ["check_training_settings"]


def check_training_settings(
    *,
    train_patch_size: Sequence[int],
    network: Mapping[str, Any],
    prediction_type: str,
    num_train_timesteps: int,
    num_inference_steps: int,
    val_num_inference_steps: int,
    datalist: str | os.PathLike,
    batch_size: int = 1,
    num_epochs: int = 1,
    phase1_epochs: int = 0,
    vae_epochs: int = 0,
    phase1_latent_cache: bool = False,
    path_sample_epochs: int = 0,
    path_sample_latent: str = "sampled",
    path_sample_steps: int = 10,
    fidelity_channels: Sequence[int] | None = None,
) -> None:
    """The training recipe's settings, before anything is built: patch size against the networks,
    the prediction type, step counts, epochs, the latent cache switch, the stage that trains the
    fidelity path on sampled latents (it needs a path), and the datalist (its files
    exist, it has training entries). Raises :class:`SettingError` (or ``FileNotFoundError`` for a
    missing datalist/path)."""
    check_patch_size("train_patch_size", train_patch_size, network)
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    check_steps("num_train_timesteps", num_train_timesteps)
    check_steps("num_inference_steps", num_inference_steps, int(num_train_timesteps))
    check_steps("val_num_inference_steps", val_num_inference_steps, int(num_train_timesteps))
    check_steps("batch_size", batch_size)
    for name, value in (("num_epochs", num_epochs), ("phase1_epochs", phase1_epochs), ("vae_epochs", vae_epochs),
                        ("path_sample_epochs", path_sample_epochs)):
        if not _is_int(value) or value < 0:
            raise SettingError(name, value, "an integer >= 0")
    check_bool("phase1_latent_cache", phase1_latent_cache)
    check_choice("path_sample_latent", path_sample_latent, LATENTS)
    if path_sample_epochs:
        check_steps("path_sample_steps", path_sample_steps, int(num_train_timesteps))
        if not fidelity_channels:
            raise SettingError("path_sample_epochs", path_sample_epochs,
                               "0 without a fidelity path (fidelity_channels is null): the stage trains the path")
    load_datalist(datalist, "training")  # every path exists, at least one entry
    load_datalist(datalist, "validation", allow_empty=True)
