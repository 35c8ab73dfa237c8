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
