"""Tiling: window placement, blending weights, padding, and tiled == untiled for functions whose
receptive field fits in the margin (pointwise, pooling aligned to the tiles, small convolutions)."""

import pytest
import torch
import torch.nn.functional as F

from bundle.diffusion import (
    DDIMSampler,
    DiffusionSchedule,
    TiledDenoiser,
    blend_weights,
    pad_to_min,
    tiled_apply,
    window_starts,
)
from bundle.diffusion.tiling import MIN_WEIGHT


# ---------------------------------------------------------------------- window_starts
@pytest.mark.parametrize(
    "size, window, overlap",
    [
        (16, 16, 8), (5, 8, 4), (17, 16, 8), (32, 16, 8), (33, 16, 8),
        (100, 8, 4), (300, 8, 4), (64, 16, 0), (20, 16, 15), (9, 8, 7),
    ],
)
def test_window_starts_cover_exactly(size, window, overlap):
    starts = window_starts(size, window, overlap)
    assert starts[0] == 0
    if size <= window:
        assert starts == [0]
        return
    assert starts[-1] + window == size  # last window flush with the end
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert all(b - a <= window - overlap for a, b in zip(starts, starts[1:]))  # overlap at least as asked
    covered = torch.zeros(size, dtype=torch.int32)
    for s in starts:
        covered[s : s + window] += 1
    assert int(covered.min()) >= 1
    # no more windows than needed with the requested stride
    assert len(starts) == -(-(size - window) // (window - overlap)) + 1


def test_window_starts_examples_and_errors():
    assert window_starts(32, 16, 8) == [0, 8, 16]
    assert window_starts(33, 16, 8) == [0, 6, 11, 17]  # spread evenly, not [0, 8, 16, 17]
    with pytest.raises(ValueError):
        window_starts(32, 16, 16)
    with pytest.raises(ValueError):
        window_starts(32, 0, 0)


# ---------------------------------------------------------------------- weights
def test_blend_weights():
    w = blend_weights((8, 16, 16), (4, 8, 8), (1, 2, 2))
    assert w.shape == (8, 16, 16) and w.dtype == torch.float32
    assert float(w.min()) == pytest.approx(MIN_WEIGHT**3) and float(w.max()) == pytest.approx(1.0)
    # separable: the product of its axis profiles
    slices, rows, cols = blend_weights((8,), 4, 1), blend_weights((16,), 8, 2), blend_weights((16,), 8, 2)
    torch.testing.assert_close(w, slices[:, None, None] * rows[None, :, None] * cols[None, None, :], rtol=1e-6, atol=0)
    # two neighbours overlapping by exactly `overlap`: the ramps sum to 1 (partition of unity)
    profile = blend_weights((16,), 8, 2, dtype=torch.float64)
    total = torch.zeros(24, dtype=torch.float64)
    total[:16] += profile
    total[8:] += profile
    torch.testing.assert_close(total[6:18], torch.ones(12, dtype=torch.float64), atol=2 * MIN_WEIGHT, rtol=0)
    assert float(profile[0]) == MIN_WEIGHT and float(profile[1]) == MIN_WEIGHT and float(profile[2]) > 0.01
    assert torch.equal(blend_weights((4, 5), 0), torch.ones(4, 5))
    with pytest.raises(ValueError):
        blend_weights((16,), 8, 5)  # 2 * margin > overlap


# ---------------------------------------------------------------------- padding
def test_pad_to_min_replicates_edges_and_crops_back():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(1, 2, 3, 5, 6)
    padded, crop = pad_to_min(x, (8, 4, 16), multiple=(1, 8, 8))
    assert padded.shape == (1, 2, 8, 8, 16)
    assert torch.equal(padded[crop], x)
    assert torch.equal(padded[:, :, 7, :5, :6], x[:, :, 2])  # last slice repeated
    assert torch.equal(padded[:, :, :3, :5, 15], x[..., 5])  # last column repeated
    same, crop = pad_to_min(x, (2, 2, 2))
    assert same is x and torch.equal(same[crop], x)


# ---------------------------------------------------------------------- tiled == untiled
SHAPES = [(1, 2, 21, 37, 29), (2, 2, 5, 20, 13), (1, 2, 8, 16, 16)]  # not multiples; smaller than the window


@pytest.mark.parametrize("shape", SHAPES)
def test_pointwise_fn_is_exact(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    mix = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    fn = lambda v: torch.tanh(torch.einsum("oc,nc...->no...", mix, v))  # noqa: E731
    out = tiled_apply(fn, x, (8, 16, 16), (4, 8, 8), out_channels=3, window_batch_size=3)
    assert out.shape == (shape[0], 3, *shape[2:])
    torch.testing.assert_close(out, fn(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_small_conv_matches_within_margin(shape):
    conv = torch.nn.Conv3d(2, 2, 3, padding=1)  # receptive radius 1 <= margin
    torch.manual_seed(0)
    x = torch.randn(shape)
    with torch.no_grad():
        reference = conv(x)
        out = tiled_apply(conv, x, (8, 16, 16), (4, 8, 8), margin=(1, 2, 2))
        # without a margin the windows' zero-padded borders leak into the blend (sin^2 ramp ~1e-2 there)
        leaky = tiled_apply(conv, x, (8, 16, 16), (4, 8, 8), margin=0)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    if shape[2] > 8 or shape[3] > 16:
        assert (leaky - reference).abs().max().item() > 1e-4


def test_encode_and_decode_like_scales():
    x = torch.randn(1, 3, 11, 56, 40, generator=torch.Generator().manual_seed(0))
    encode = lambda v: F.avg_pool3d(v, (1, 8, 8)).repeat(1, 2, 1, 1, 1)[:, :4]  # noqa: E731  3 -> 4 channels, /8
    latent = tiled_apply(encode, x, (8, 32, 32), (4, 16, 16), out_channels=4, scale=(1, 1 / 8, 1 / 8))
    assert latent.shape == (1, 4, 11, 7, 5)
    torch.testing.assert_close(latent, encode(x), rtol=0, atol=1e-6)
    decode = lambda z: F.interpolate(z[:, :3], scale_factor=(1, 8, 8), mode="nearest")  # noqa: E731
    image = tiled_apply(decode, latent, (8, 4, 4), (4, 2, 2), out_channels=3, scale=(1, 8, 8))
    assert image.shape == (1, 3, 11, 56, 40)
    torch.testing.assert_close(image, decode(latent), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 8"):
        tiled_apply(encode, x[..., :50, :], (8, 32, 32), (4, 16, 16), scale=(1, 1 / 8, 1 / 8))
    with pytest.raises(ValueError, match="expected"):
        tiled_apply(encode, x, (8, 32, 32), (4, 16, 16), out_channels=3, scale=(1, 1 / 8, 1 / 8))


# ---------------------------------------------------------------------- the denoiser
class FakeUNet:
    """Pointwise in space, uses t and the condition; records the window batches it sees."""

    def __init__(self):
        self.batches = []

    def __call__(self, z, t, condition=None):
        self.batches.append(tuple(z.shape))
        out = 0.5 * z + t.view(-1, 1, 1, 1, 1).to(z.dtype) / 1000
        return out if condition is None else out + 0.25 * condition


def test_tiled_denoiser_matches_whole_call_and_bounds_batches():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 13, 24, 40, generator=g)
    condition = torch.randn(2, 4, 13, 24, 40, generator=g)
    t = torch.tensor([999, 10])
    unet = FakeUNet()
    denoiser = TiledDenoiser(unet, window=(8, 16, 16), overlap=(4, 8, 8), window_batch_size=4)
    out = denoiser(z, t, condition)
    torch.testing.assert_close(out, FakeUNet()(z, t, condition), rtol=0, atol=1e-6)
    n_windows = 2 * 3 * 2 * 4  # batch x slices (0, 3, 5) x rows (0, 8) x columns (0, 8, 16, 24)
    assert sum(b[0] for b in unet.batches) == n_windows
    assert max(b[0] for b in unet.batches) == 4 and all(b[1:] == (4, 8, 16, 16) for b in unet.batches)
    torch.testing.assert_close(denoiser(z, t), FakeUNet()(z, t), rtol=0, atol=1e-6)  # no condition


def test_whole_volume_ddim_with_one_noise_field():
    """The DDIM loop on the whole latent through the tiled denoiser equals the untiled loop, eta > 0
    included: one generator draws one noise field for the whole latent at each step."""
    schedule = DiffusionSchedule()
    sampler = DDIMSampler(schedule, 10, eta=1.0)
    g = torch.Generator().manual_seed(0)
    z_source = torch.randn(1, 4, 11, 20, 20, generator=g)
    z_T = torch.randn(1, 4, 11, 20, 20, generator=g)
    denoiser = TiledDenoiser(FakeUNet(), window=(8, 16, 16), overlap=(4, 8, 8))
    tiled = sampler.sample(lambda z, t: denoiser(z, t, z_source), z_T, generator=torch.Generator().manual_seed(1))
    whole = sampler.sample(lambda z, t: FakeUNet()(z, t, z_source), z_T, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def test_fractional_overlap_is_whole_units_and_at_least_one():
    from bundle.diffusion.tiling import fractional_overlap

    # the recipe's default (a quarter) at the demo's and the spec's slabs, image tiles in VAE units
    assert fractional_overlap([8, 64, 64], 0.25, [1, 8, 8]) == [2, 16, 16]
    assert fractional_overlap([8, 128, 128], 0.25, [1, 8, 8]) == [2, 32, 32]
    assert fractional_overlap([8, 16, 16], 0.25) == [2, 4, 4]
    assert fractional_overlap([8, 64, 64], 0.5, [1, 8, 8]) == [4, 32, 32]  # the earlier default
    assert fractional_overlap([8, 16, 16], 0.05, [1, 8, 8]) == [1, 8, 8]   # never 0 where windows meet
    assert fractional_overlap([8, 8, 8], 0.0) == [0, 0, 0]
    with pytest.raises(ValueError, match="overlap fraction"):
        fractional_overlap([8, 8, 8], 1.0)
