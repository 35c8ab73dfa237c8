"""A tiny generated dataset and a tiny recipe config shared by the engine tests."""

from __future__ import annotations


import pytest
import torch


TINY_NETWORK = {
    "image_channels": 3,
    "latent_channels": 4,
    "num_slices": 8,
    "vae_channels": [8, 16, 16, 16],
    "vae_num_res_blocks": 1,
    "unet_model_channels": 16,
    "unet_channel_mult": [1, 2, 2, 2],
    "unet_num_res_blocks": 1,
    "unet_attention_levels": [1, 2],
    "unet_num_heads": 2,
    "time_embed_dim": 32,
    "norm_num_groups": 4,
    "gradient_checkpointing": False,
}


# The fidelity settings (docs/fidelity.md) on top of the tiny recipe: a fidelity path at the
# three finest levels, every extra reconstruction term, the residual output.
FIDELITY_OVERRIDES = {
    "network#fidelity_channels": [8, 16, 16],
    "ssim_weight": 0.5,
    "gradient_weight": 0.5,
    "frequency_weight": 0.5,
    "residual_output": True,
    "fidelity_weight": 0.8,
}


@pytest.fixture(params=["spec", "fidelity"])
def recipe_variant(request) -> tuple[str, dict]:
    """(name, overrides on top of tiny_overrides): the spec recipe and the fidelity settings."""
    return request.param, (dict(FIDELITY_OVERRIDES) if request.param == "fidelity" else {})






@pytest.fixture
def tiny_overrides(tiny_dataset, tmp_path) -> dict:
    """Overrides of configs/train.yaml for a recipe that runs in seconds."""
    return {
        "dataset_dir": str(tiny_dataset),
        "output_dir": str(tmp_path / "run"),
        "model_path": str(tmp_path / "run" / "model.pt"),
        "network": dict(TINY_NETWORK),
        "train_patch_size": [8, 64, 64],
        "batch_size": 1,
        "vae_epochs": 1,
        "num_epochs": 2,
        "phase1_epochs": 1,
        "num_workers": 0,
        "cache": "none",
        "save_every": 1,
        "val_interval": 2,
        "val_num_inference_steps": 2,
        "amp": "fp32",
        "device": "cpu",
    }
