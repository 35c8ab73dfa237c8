"""The demo recipe's default (fidelity path + gradient term) and its one-setting way back to the spec."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from bundle.networks import VideoVAE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # configs refer to configs/common.yaml relative to the bundle root


def demo_parser(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(["configs/train.yaml", "configs/demo.yaml"])
    parser.update(overrides)
    return parser


def test_demo_default_is_the_measured_winner():
    parser = demo_parser()
    vae = parser.get_parsed_content("autoencoder_def")
    assert vae.fidelity is not None and vae.config["fidelity_channels"] == [32, 64, 64]
    assert parser.get_parsed_content("gradient_weight") == 1.0
    assert parser.get_parsed_content("fidelity_loss_weight") == 4.0


# `--spec_exact True` reaches the config as a bool, `--spec_exact true` as a string (python-fire)
@pytest.mark.parametrize("flag", [True, "true", "True"])
def test_spec_exact_is_one_setting_away(flag):
    parser = demo_parser(spec_exact=flag)
    vae = parser.get_parsed_content("autoencoder_def")
    network = parser.get_parsed_content("network")
    spec_vae = VideoVAE(
        in_channels=network["image_channels"], out_channels=network["image_channels"],
        latent_channels=network["latent_channels"], channels=network["vae_channels"],
        num_res_blocks=network["vae_num_res_blocks"], norm_num_groups=network["norm_num_groups"],
    )
    assert vae.fidelity is None and "fidelity_channels" not in vae.config
    assert {k: v.shape for k, v in vae.state_dict().items()} == {k: v.shape for k, v in spec_vae.state_dict().items()}
    for term in ("ssim_weight", "gradient_weight", "frequency_weight", "adversarial_weight"):
        assert parser.get_parsed_content(term) == 0.0, term
    assert parser.get_parsed_content("residual_output") is False


@pytest.mark.parametrize("flag", [False, "false", "False"])
def test_spec_exact_false_keeps_the_default(flag):
    parser = demo_parser(spec_exact=flag)
    assert parser.get_parsed_content("network#fidelity_channels") == [32, 64, 64]
