"""VideoVAE and kl_divergence on a tiny configuration (CPU, fractions of a second each)."""

from __future__ import annotations

import math

import pytest
import torch

import bundle.networks.blocks as blocks
from bundle.networks import VideoVAE, kl_divergence

SHAPE = (2, 3, 2, 16, 16)  # B, C, T, H, W; 16 = 2 * the tiny VAE's factor 8


@pytest.fixture
def vae(tiny_vae_kwargs):
    torch.manual_seed(0)
    return VideoVAE(**tiny_vae_kwargs)


def _slab(seed: int = 1, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_api(vae):
    x = _slab()
    assert vae.downsample_factor == 8
    assert vae.encoder(x).shape == (2, 8, 2, 2, 2)
    mean, logvar = vae.encode_moments(x)
    assert mean.shape == logvar.shape == (2, 4, 2, 2, 2)
    z = vae.encode(x)
    assert vae.decoder(z).shape == vae.decode(z).shape == SHAPE
    recon, mean, logvar = vae(x)
    assert recon.shape == SHAPE and mean.shape == (2, 4, 2, 2, 2)


def test_forward_backward_finite_grads(vae):
    vae.train()
    recon, mean, logvar = vae(_slab(), generator=torch.Generator().manual_seed(0))
    loss = torch.nn.functional.mse_loss(recon, _slab(2)) + 1e-3 * kl_divergence(mean, logvar)
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} receives no gradient"


def test_gradient_checkpointing_same_gradients(vae, monkeypatch):
    calls = []
    real = blocks.checkpoint
    monkeypatch.setattr(blocks, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, target = _slab(), _slab(2)

    def grads(use_checkpoint: bool):
        vae.zero_grad()
        vae.use_checkpoint = use_checkpoint
        recon, _, _ = vae(x, sample=False)
        torch.nn.functional.mse_loss(recon, target).backward()
        return recon.detach(), {n: p.grad.clone() for n, p in vae.named_parameters()}

    vae.train()
    out_plain, plain = grads(False)
    assert not calls
    out_ckpt, ckpt = grads(True)
    assert calls, "checkpointing was not used while training"
    torch.testing.assert_close(out_ckpt, out_plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)

    # inactive in eval mode and without grad
    calls.clear()
    vae.eval()
    vae(x)
    vae.train()
    with torch.no_grad():
        vae(x)
    assert not calls


def test_encode_deterministic_and_sampling_reproducible(vae):
    vae.eval()
    x = _slab()
    mean, logvar = vae.encode_moments(x)
    torch.testing.assert_close(vae.encode(x), mean, rtol=0, atol=0)
    torch.testing.assert_close(vae.encode(x), vae.encode(x), rtol=0, atol=0)
    a = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
    b = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
    c = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    # the draw is mean + std * eps with eps from the generator
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, mean + torch.exp(0.5 * logvar) * eps)
    recon_a, _, _ = vae(x, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(recon_a, vae.decode(a))


def test_logvar_is_clamped(vae):
    with torch.no_grad():
        vae.encoder.conv_out.bias[4:] = 1e4
    _, logvar = vae.encode_moments(_slab())
    assert logvar.max().item() == 20.0
    with torch.no_grad():
        vae.encoder.conv_out.bias[4:] = -1e4
    _, logvar = vae.encode_moments(_slab())
    assert logvar.min().item() == -30.0


def test_kl_divergence_by_hand():
    mean = torch.tensor([0.0, 1.0, -2.0, 0.5])
    logvar = torch.tensor([0.0, math.log(2.0), 0.0, -1.0])
    by_hand = [
        0.0,  # standard normal: no divergence
        0.5 * (1.0 + 2.0 - 1.0 - math.log(2.0)),
        0.5 * 4.0,
        0.5 * (0.25 + math.exp(-1.0) - 1.0 + 1.0),
    ]
    expected = sum(by_hand) / 4  # the mean over all elements, not a sum
    assert kl_divergence(mean, logvar).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(mean.reshape(2, 2), logvar.reshape(2, 2)).item() == pytest.approx(expected, rel=1e-6)
    assert kl_divergence(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)).item() == 0.0
    assert kl_divergence(mean.half(), logvar.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="same shape"):
        kl_divergence(mean, logvar[:2])


def test_bad_inputs_raise(vae):
    with pytest.raises(ValueError, match=r"\(12, 16\).*divisible by the downsample factor 8"):
        vae.encode(torch.zeros(1, 3, 4, 12, 16))
    with pytest.raises(ValueError, match="3 channels"):
        vae.encode(torch.zeros(1, 1, 4, 16, 16))
    with pytest.raises(ValueError, match="5D slab"):
        vae.encode(torch.zeros(3, 4, 16, 16))
    with pytest.raises(ValueError, match="4 channels"):
        vae.decode(torch.zeros(1, 3, 4, 2, 2))


def test_bad_arguments_raise(tiny_vae_kwargs):
    with pytest.raises(ValueError, match="channels\\[1\\].*18 channels.*norm_num_groups=4"):
        VideoVAE(**{**tiny_vae_kwargs, "channels": (8, 18, 16, 16)})
    with pytest.raises(ValueError, match="at least one"):
        VideoVAE(**{**tiny_vae_kwargs, "channels": ()})
    with pytest.raises(ValueError, match="latent_channels"):
        VideoVAE(**{**tiny_vae_kwargs, "latent_channels": 0})


def test_other_depths_and_factors(tiny_vae_kwargs):
    vae = VideoVAE(**{**tiny_vae_kwargs, "channels": (8, 16)})
    assert vae.downsample_factor == 2
    x = torch.randn(1, 3, 3, 6, 10)
    assert vae.encode(x).shape == (1, 4, 3, 3, 5)
    assert vae.decode(vae.encode(x)).shape == x.shape


def test_channels_last_matches(vae):
    vae.eval()
    x = _slab()
    with torch.no_grad():
        ref = vae(x, sample=False)[0]
        vae_cl = vae.to(memory_format=torch.channels_last_3d)
        out = vae_cl(x.contiguous(memory_format=torch.channels_last_3d), sample=False)[0]
    # different convolution kernels: equal up to float32 rounding
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)


def test_bf16_autocast_runs(vae):
    vae.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        recon, mean, logvar = vae(_slab(), sample=False)
    assert recon.shape == SHAPE and torch.isfinite(recon.float()).all()
