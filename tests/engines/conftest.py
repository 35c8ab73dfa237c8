"""A tiny generated dataset and a tiny recipe config shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TRAIN_CONFIG = str(REPO / "configs" / "train.yaml")

TINY_NETWORK = yaml.safe_load((Path(__file__).resolve().parents[1] / "tiny.yaml").read_text())["network"]


# The fidelity settings (docs/fidelity.md) on top of the tiny recipe: a fidelity path at the
# three finest levels, every extra reconstruction term, the residual output.
FIDELITY_OVERRIDES = {
    "fidelity_channels": [8, 16, 16],
    "reconstruction_loss#ssim": 0.5,
    "reconstruction_loss#gradient": 0.5,
    "reconstruction_loss#frequency": 0.5,
    "enhancer_settings#residual": True,
    "enhancer_settings#fidelity_weight": 0.8,
}


# The spec's VAE and losses on top of the recipe's defaults (which add the fidelity path, the low
# band from the source and a gradient term: configs/train.yaml).
SPEC_OVERRIDES = {
    "fidelity_channels": "$None",
    "source_lowpass_sigma": 0.0,
    "source_lowpass_levels": "none",
    "source_lowpass_sigma_z": 0.0,
    "reconstruction_loss#gradient": 0.0,
}


@pytest.fixture
def fidelity_overrides() -> dict:
    return dict(FIDELITY_OVERRIDES)


@pytest.fixture(params=["spec", "fidelity"])
def recipe_variant(request) -> tuple[str, dict]:
    """(name, overrides on top of tiny_overrides): the spec's VAE and the fidelity settings."""
    return request.param, dict(FIDELITY_OVERRIDES if request.param == "fidelity" else SPEC_OVERRIDES)






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


@pytest.fixture
def make_parser(monkeypatch):
    """``make_parser(overrides)``: configs/train.yaml with ``overrides``, seeded as its run list's
    first step does, from the bundle root (configs refer to configs/common.yaml relative to it)."""
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO)

    def make(overrides: dict, studies: tuple[str, ...] = ()) -> ConfigParser:
        """``studies``: override files of configs/studies/ (names without .yaml) after train.yaml."""
        parser = ConfigParser()
        parser.read_config([TRAIN_CONFIG] + [str(REPO / "configs" / "studies" / f"{name}.yaml") for name in studies])
        parser.update(overrides)
        parser.get_parsed_content("training#0")  # monai.utils.set_determinism(seed=@seed)
        return parser

    return make
