"""Reconstruction losses of the VAE (bundle/engines/losses.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bundle.engines.losses import ReconstructionLoss


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand((2, 3, 8, 32, 32), generator=g) * 2 - 1
    recon = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(-1, 1)
    return recon, target


def test_l1_alone_is_the_spec_term_exactly():
    recon, target = _pair()
    total, terms = ReconstructionLoss()(recon, target)
    assert torch.equal(total, F.l1_loss(recon, target)) and set(terms) == {"l1"}


def test_every_term_is_zero_for_a_perfect_reconstruction_and_positive_otherwise():
    loss = ReconstructionLoss(l1=1, ssim=1, gradient=1, frequency=1)
    recon, target = _pair()
    total, terms = loss(target, target)
    assert float(total) == pytest.approx(0, abs=1e-6)
    total, terms = loss(recon, target)
    assert set(terms) == {"l1", "ssim", "gradient", "frequency"} and all(v > 0 for v in terms.values())
    assert float(total) == pytest.approx(sum(terms.values()), rel=1e-5)


def test_bf16_autocast_gives_the_float32_values():
    """SSIM's variances cancel catastrophically in bfloat16 (the loss went to -inf in training)."""
    loss = ReconstructionLoss(l1=1, ssim=1, gradient=1, frequency=1)
    recon, target = _pair(1)
    reference, _ = loss(recon, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = loss(recon.bfloat16(), target.bfloat16())
    assert torch.isfinite(total) and float(total) == pytest.approx(float(reference), rel=1e-2)


def test_bad_weights_raise():
    with pytest.raises(ValueError):
        ReconstructionLoss(l1=-1)
    with pytest.raises(ValueError):
        ReconstructionLoss(l1=0)


def test_equal_channel_weights_are_the_plain_means():
    recon, target = _pair()
    plain = ReconstructionLoss(l1=1, gradient=1, frequency=1)(recon, target)[0]
    equal = ReconstructionLoss(l1=1, gradient=1, frequency=1, channel_weights=[0.5, 0.5, 0.5])(recon, target)[0]
    assert float(equal) == pytest.approx(float(plain), rel=1e-6)


def test_channel_weights_weigh_each_channels_error():
    recon, target = _pair()
    per_channel = (recon - target).abs().mean(dim=(0, 2, 3, 4))
    weights = torch.tensor([4096.0, 400.0, 1200.0])  # window widths: a HU error costs alike
    total, terms = ReconstructionLoss(channel_weights=weights)(recon, target)
    assert float(total) == pytest.approx(float((weights * per_channel).sum() / weights.sum()), rel=1e-6)
    # an error in the widest channel alone costs its share of the weights
    only_first = target.clone()
    only_first[:, 0] += 0.1
    total, _ = ReconstructionLoss(channel_weights=weights)(only_first, target)
    assert float(total) == pytest.approx(0.1 * 4096 / 5696, rel=1e-5)


@pytest.mark.parametrize("weights", [[], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0]])
def test_bad_channel_weights_raise(weights):
    with pytest.raises(ValueError, match="channel_weights"):
        ReconstructionLoss(channel_weights=weights)


def test_channel_weights_must_match_the_channels():
    recon, target = _pair()
    with pytest.raises(ValueError, match="2 channel weights for 3 channels"):
        ReconstructionLoss(channel_weights=[1.0, 2.0])(recon, target)
