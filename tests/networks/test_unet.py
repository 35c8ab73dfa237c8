"""ConditionalUNet3D and its attention / embedding blocks on a tiny configuration (CPU)."""

from __future__ import annotations

import pytest
import torch

import bundle.networks.blocks as blocks
from bundle.networks import ConditionalUNet3D
from bundle.networks.blocks import AttentionBlock3D, timestep_embedding

SHAPE = (2, 4, 2, 8, 8)  # B, C, T, h, w; 8 = the factor 8 of four levels (1x1 at the bottleneck)


@pytest.fixture
def unet(tiny_unet_kwargs):
    torch.manual_seed(0)
    return ConditionalUNet3D(**tiny_unet_kwargs)


def _latent(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_shape_and_zero_initial_output(unet):
    noisy, condition = _latent(1), _latent(2)
    out = unet(noisy, torch.tensor([0, 999]), condition)
    assert out.shape == SHAPE
    # conv_out is zero-initialised: an untrained network predicts zero noise
    assert torch.count_nonzero(out) == 0
    assert unet.downsample_factor == 8


def test_forward_backward_finite_grads(unet, randomize):
    unet.train()
    noisy, condition, target = _latent(1), _latent(2), _latent(3)
    loss = torch.nn.functional.mse_loss(unet(noisy, torch.tensor([10, 500]), condition), target)
    loss.backward()
    for name, p in unet.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # once the zero-initialised layers have moved, every parameter takes part
    randomize(unet)
    unet.zero_grad()
    torch.nn.functional.mse_loss(unet(noisy, torch.tensor([10, 500]), condition), target).backward()
    for name, p in unet.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} receives no gradient"


def test_gradient_checkpointing_same_gradients(unet, randomize, monkeypatch):
    calls = []
    real = blocks.checkpoint
    monkeypatch.setattr(blocks, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    randomize(unet)
    unet.train()
    noisy, condition, target, t = _latent(1), _latent(2), _latent(3), torch.tensor([3, 700])

    def grads(use_checkpoint: bool):
        unet.zero_grad()
        unet.use_checkpoint = use_checkpoint
        out = unet(noisy, t, condition)
        torch.nn.functional.mse_loss(out, target).backward()
        return out.detach(), {n: p.grad.clone() for n, p in unet.named_parameters()}

    out_plain, plain = grads(False)
    assert not calls
    out_ckpt, ckpt = grads(True)
    assert calls, "checkpointing was not used while training"
    torch.testing.assert_close(out_ckpt, out_plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    calls.clear()
    unet.eval()
    unet(noisy, t, condition)
    assert not calls


def test_inputs_matter(unet, randomize):
    randomize(unet)
    unet.eval()
    noisy, condition = _latent(1), _latent(2)
    with torch.no_grad():
        ref = unet(noisy, torch.tensor([100, 100]), condition)
        assert not torch.allclose(unet(noisy, torch.tensor([100, 900]), condition)[1], ref[1])
        assert not torch.allclose(unet(noisy, torch.tensor([100, 100]), _latent(5)), ref)
        # int and float steps, and a scalar broadcast to the batch, are the same thing
        torch.testing.assert_close(unet(noisy, torch.tensor([100.0, 100.0]), condition), ref)
        torch.testing.assert_close(unet(noisy, torch.tensor(100), condition), ref)
        # batch items are independent
        torch.testing.assert_close(unet(noisy[:1], torch.tensor([100]), condition[:1]), ref[:1], rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise(unet):
    noisy, condition, t = _latent(1), _latent(2), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"\(12, 16\) must be divisible by 8"):
        unet(torch.zeros(2, 4, 4, 12, 16), t, torch.zeros(2, 4, 4, 12, 16))
    with pytest.raises(ValueError, match="condition must have shape"):
        unet(noisy, t, condition[:, :, :1])
    with pytest.raises(ValueError, match="condition is required"):
        unet(noisy, t)
    with pytest.raises(ValueError, match=r"timesteps must have shape \(2,\)"):
        unet(noisy, torch.tensor([1, 2, 3]), condition)
    with pytest.raises(ValueError, match="noisy latent"):
        unet(torch.zeros(2, 3, 4, 16, 16), t, condition)


def test_bad_arguments_raise(tiny_unet_kwargs):
    kw = tiny_unet_kwargs
    with pytest.raises(ValueError, match=r"attention_levels \[1, 4\].*4 levels"):
        ConditionalUNet3D(**{**kw, "attention_levels": (1, 4)})
    with pytest.raises(ValueError, match="level 1.*not divisible by norm_num_groups"):
        ConditionalUNet3D(**{**kw, "channel_mult": (2, 3, 4, 4), "norm_num_groups": 32})
    with pytest.raises(ValueError, match="num_heads=3"):
        ConditionalUNet3D(**{**kw, "num_heads": 3})
    with pytest.raises(ValueError, match="channel_mult"):
        ConditionalUNet3D(**{**kw, "channel_mult": ()})


def test_unconditional_and_other_sizes(tiny_unet_kwargs):
    net = ConditionalUNet3D(
        **{
            **tiny_unet_kwargs,
            "condition_channels": 0,
            "channel_mult": (1, 2),
            "attention_levels": (1,),
            "temporal_attention": False,
        }
    )
    assert net.middle.temporal_attention is None
    x = torch.randn(1, 4, 3, 6, 10)
    assert net(x, torch.tensor([5])).shape == x.shape


def test_channels_last_matches(unet, randomize):
    randomize(unet)
    unet.eval()
    noisy, condition, t = _latent(1), _latent(2), torch.tensor([1, 2])
    with torch.no_grad():
        ref = unet(noisy, t, condition)
        cl = torch.channels_last_3d
        out = unet.to(memory_format=cl)(noisy.contiguous(memory_format=cl), t, condition.contiguous(memory_format=cl))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


def test_bf16_autocast_runs(unet, randomize):
    randomize(unet)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet(_latent(1), torch.tensor([1, 2]), _latent(2))
    assert out.shape == SHAPE and torch.isfinite(out.float()).all()


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 16)
    assert emb.shape == (3, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.cat([torch.ones(8), torch.zeros(8)]))  # cos 0, sin 0
    torch.testing.assert_close(emb[1, 0], torch.cos(torch.tensor(1.0)))  # fastest frequency is 1
    assert timestep_embedding(torch.tensor([3.0]), 7).shape == (1, 7)
    with pytest.raises(ValueError, match="shape \\(B,\\)"):
        timestep_embedding(torch.zeros(2, 1), 8)


@pytest.mark.parametrize("over", ["volume", "slices"])
def test_attention_reach(over, randomize):
    """'slices' mixes the slices of one in-plane position only; 'volume' mixes everything."""
    torch.manual_seed(0)
    block = randomize(AttentionBlock3D(8, num_heads=2, over=over, ff_mult=0 if over == "slices" else 4)).eval()
    x = torch.randn(1, 8, 4, 3, 3)
    poked = x.clone()
    # change slice 0 at in-plane position (1, 1); not by a constant, which LayerNorm would remove
    poked[:, :, 0, 1, 1] += 5.0 * torch.randn(8)
    with torch.no_grad():
        changed = (block(poked) - block(x)).abs().amax(dim=1)[0] > 1e-6  # (T, H, W)
    assert changed[:, 1, 1].all()  # every slice at the poked position
    others = changed.clone()
    others[:, 1, 1] = False
    assert others.any() == (over == "volume")
