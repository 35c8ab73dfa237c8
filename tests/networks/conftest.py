"""Shared fixtures for the network tests: the repository root, tiny configurations for CPU runs,
and the full specification networks built on the ``meta`` device (shapes only, no memory)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMON_CONFIG = REPO_ROOT / "configs" / "common.yaml"

# Small enough for a forward + backward in well under a second on 2 CPU cores; every structural
# feature of the specification is kept (4 levels, attention at 1 and 2, slice attention).
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, channels=(8, 16, 16, 16),
    num_res_blocks=2, num_mid_blocks=2, norm_num_groups=4,
)
TINY_UNET = dict(
    in_channels=4, condition_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2, 2, 2),
    num_res_blocks=2, attention_levels=(1, 2), num_heads=2, time_embed_dim=32, norm_num_groups=4,
)


def build_from_common(*ids: str) -> list[torch.nn.Module]:
    """Instantiate ``ids`` of configs/common.yaml through MONAI's ConfigParser on the meta device,
    from the repository root (the configs' paths are relative to it)."""
    from monai.bundle import ConfigParser

    with contextlib.chdir(REPO_ROOT):
        parser = ConfigParser()
        parser.read_config(str(COMMON_CONFIG.relative_to(REPO_ROOT)))
        with torch.device("meta"):
            return [parser.get_parsed_content(i) for i in ids]


@pytest.fixture(scope="session")
def spec_nets():
    """(VideoVAE, ConditionalUNet3D) with the specification's sizes, on the meta device."""
    vae, unet = build_from_common("autoencoder_def", "unet_def")
    return vae.eval(), unet.eval()


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Add noise to every parameter so zero-initialised layers stop hiding their inputs
    (otherwise gradients upstream of them are exactly zero and comparisons prove nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return module


# Test modules take these through fixtures rather than `import conftest`: several test folders
# have a conftest.py and no __init__.py, so the module name `conftest` is not unique.
@pytest.fixture
def tiny_vae_kwargs() -> dict:
    return dict(TINY_VAE)


@pytest.fixture
def tiny_unet_kwargs() -> dict:
    return dict(TINY_UNET)


@pytest.fixture
def randomize():
    return randomize_


@pytest.fixture(scope="session")
def build_common():
    return build_from_common
