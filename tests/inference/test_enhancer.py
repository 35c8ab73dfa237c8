"""Whole-volume inference with CTEnhancer: shapes, seeds, seam-free tiling, samples, strength."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from torch import nn

import bundle.inference.enhancer as enhancer_module
from bundle.diffusion import DDIMSampler, DiffusionSchedule
from bundle.inference import CTEnhancer
from bundle.networks import ConditionalUNet3D, VideoVAE
from bundle.utils.validation import SettingError

# The U-Net window is 8 latent slices x 8 x 8 latent pixels = 8 x 64 x 64 image voxels.
TILES = dict(latent_window=(8, 8, 8), latent_overlap=(4, 4, 4), image_tile=(8, 64, 64), image_overlap=(4, 32, 32))




def tiny_enhancer(**settings) -> CTEnhancer:
    """Random tiny networks; the U-Net's zero-initialised output layer is perturbed so that its
    prediction depends on its inputs (else every test below would pass trivially)."""
    torch.manual_seed(0)
    vae = VideoVAE(channels=(8, 16, 16, 16), norm_num_groups=4, num_res_blocks=1, num_mid_blocks=1)
    unet = ConditionalUNet3D(
        model_channels=16, channel_mult=(1, 2, 2, 2), num_heads=2, norm_num_groups=4, time_embed_dim=32,
        num_res_blocks=1,
    )
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    settings = {**TILES, "num_inference_steps": 2, **settings}
    return CTEnhancer(vae, unet, **settings).eval()


def random_hu(shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * 2000 - 1000).round()


class LocalVAE(nn.Module):
    """The VideoVAE interface with a known local function.

    encode: 3x3x3 convolution (radius 1 voxel), then mean over aligned 8x8 in-plane blocks;
    decode: nearest 8x upsampling in-plane, then a 3x3x3 convolution. ``kernel=1`` makes both
    pointwise per latent voxel / pixel block.
    """

    def __init__(self, kernel: int = 3, factor: int = 8):
        super().__init__()
        self.config = dict(in_channels=3, out_channels=3, latent_channels=4, kernel=kernel)
        self.downsample_factor = factor
        torch.manual_seed(1)
        self.encoder = nn.Conv3d(3, 4, kernel, padding=kernel // 2)
        self.decoder = nn.Conv3d(4, 3, kernel, padding=kernel // 2)

    def encode(self, x):
        f = self.downsample_factor
        return F.avg_pool3d(self.encoder(x), (1, f, f))

    def decode(self, z):
        f = self.downsample_factor
        return self.decoder(F.interpolate(z, scale_factor=(1, f, f), mode="nearest"))


# --- shapes ------------------------------------------------------------------------------------
def test_volume_larger_than_one_window_in_every_axis_keeps_its_shape():
    enhancer = tiny_enhancer()
    # 11 slices > 8; 70 x 90 pixels pad to 72 x 96 -> latent 9 x 12 > 8 x 8; both need cropping back
    source = random_hu((1, 11, 70, 90))
    out = enhancer.enhance(source)
    assert out.hu.shape == source.shape and out.uncertainty is None
    assert torch.isfinite(out.hu).all()
    assert enhancer(source[None]).shape == (1, 1, 11, 70, 90)


def test_volume_smaller_than_one_window_keeps_its_shape():
    enhancer = tiny_enhancer()
    source = random_hu((1, 1, 20, 30))  # one slice, 20 x 30 pixels: padded inside, cropped back
    assert enhancer.enhance(source).hu.shape == source.shape


def test_metatensor_in_metatensor_out_with_its_metadata():
    enhancer = tiny_enhancer()
    affine = torch.diag(torch.tensor([-0.7, -0.8, 2.5, 1.0], dtype=torch.float64))
    source = MetaTensor(random_hu((1, 1, 8, 64, 64)), affine=affine)
    out = enhancer(source)
    assert isinstance(out, MetaTensor) and out.shape == source.shape
    assert torch.equal(out.affine, source.affine)
    assert torch.equal(out.as_tensor(), enhancer.enhance(source.as_tensor()).hu)


# --- seeds -------------------------------------------------------------------------------------
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_same_seed_same_output_different_seed_differs(eta):
    enhancer = tiny_enhancer(eta=eta)
    source = random_hu((1, 9, 64, 64))
    first = enhancer.enhance(source, seed=3).hu
    again = enhancer.enhance(source, seed=3).hu
    other = enhancer.enhance(source, seed=4).hu
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1.0  # HU


# --- tiling adds no seams ------------------------------------------------------------------------
def test_tiled_encode_and_decode_equal_untiled_for_a_local_network():
    """Tolerance: voxels whose value depends on the tile (within the convolution's radius, 1 voxel,
    of a tile edge) lie inside the blending margin (8 pixels in-plane, 1 slice here), where a
    tile's weight is MIN_WEIGHT = 1e-6 next to a neighbour's ~1; the error left is ~1e-6 of the
    values, plus float32 rounding of the weighted sums. 1e-4 of the value range leaves room for
    the rounding and fails for any real seam (a tile-border error has the size of the values)."""
    vae = LocalVAE(kernel=3)
    enhancer = CTEnhancer(vae, tiny_enhancer().unet, **TILES)
    # larger than a tile in every axis: 20 > 8 slices, 152 and 136 > 64 pixels
    channels = enhancer.windows.to_channels(random_hu((1, 1, 20, 152, 136)))
    with torch.no_grad():
        whole = vae.encode(channels)
        tiled = enhancer.encode(channels)
        assert tiled.shape == whole.shape == (1, 4, 20, 19, 17)
        assert (tiled - whole).abs().max() <= 1e-4 * whole.abs().max()

        decoded_whole = vae.decode(whole)
        decoded_tiled = enhancer.decode(whole)
        assert decoded_tiled.shape == decoded_whole.shape == channels.shape
        assert (decoded_tiled - decoded_whole).abs().max() <= 1e-4 * decoded_whole.abs().max()


def test_one_tile_covering_the_volume_is_the_network_itself():
    enhancer = tiny_enhancer(image_tile=(16, 128, 128), image_overlap=(4, 32, 32))
    channels = enhancer.windows.to_channels(random_hu((1, 1, 12, 128, 96)))
    with torch.no_grad():
        assert torch.equal(enhancer.encode(channels), enhancer.autoencoder.encode(channels))


# --- samples and uncertainty -------------------------------------------------------------------
def test_num_samples_gives_the_mean_and_std_of_single_samples():
    enhancer = tiny_enhancer(eta=0.5)
    source = random_hu((1, 9, 66, 64))
    out = enhancer.enhance(source, num_samples=3, seed=10)
    assert out.hu.shape == out.uncertainty.shape == source.shape
    assert (out.uncertainty >= 0).all() and torch.isfinite(out.uncertainty).all()
    assert out.uncertainty.max() > 0
    singles = torch.stack([enhancer.enhance(source, seed=10 + k).hu for k in range(3)])
    torch.testing.assert_close(out.hu, singles.mean(0), rtol=0, atol=1e-3)
    torch.testing.assert_close(out.uncertainty, singles.std(0, correction=0), rtol=0, atol=1e-3)


class BrightOracle(nn.Module):
    """A "U-Net" for prediction_type="sample": predicts x0 = the condition where the condition's
    first channel is positive (bright voxels), and x0 = z_t (noise-dependent) elsewhere."""

    config = {"oracle": True}

    def forward(self, z_t, t, condition):
        return torch.where(condition[:, :1] > 0, condition, z_t)


def test_uncertainty_is_zero_where_samples_agree():
    vae = LocalVAE(kernel=1)  # pointwise per 8x8 block: the agreement region stays sharp
    with torch.no_grad():  # latent = (full-range window, soft, lung, full-range), decoded back
        vae.encoder.weight.zero_(), vae.encoder.bias.zero_(), vae.decoder.weight.zero_(), vae.decoder.bias.zero_()
        for latent, channel in ((0, 0), (1, 1), (2, 2), (3, 0)):
            vae.encoder.weight[latent, channel] = 1.0
        for channel in range(3):
            vae.decoder.weight[channel, channel] = 1.0
    enhancer = CTEnhancer(vae, BrightOracle(), DiffusionSchedule(prediction_type="sample"), num_inference_steps=3,
                          **TILES)
    source = torch.full((1, 8, 64, 128), -1000.0)
    source[..., :64] = 2000.0  # bright left half: > 1024 HU, so the full-range channel is > 0
    out = enhancer.enhance(source, num_samples=3, eta=1.0)
    assert out.uncertainty.shape == source.shape
    agree, differ = out.uncertainty[..., :64], out.uncertainty[..., 64:]
    assert agree.abs().max() <= 1e-3  # HU
    torch.testing.assert_close(out.hu[..., :64], source[..., :64], rtol=0, atol=0.5)
    assert differ.mean() > 1.0


# --- strength ------------------------------------------------------------------------------------
def test_strength_runs_the_last_steps_from_the_noised_source_latent(monkeypatch):
    enhancer = tiny_enhancer(num_inference_steps=4)
    source = random_hu((1, 8, 64, 64))
    calls = []
    enhancer.unet.register_forward_pre_hook(lambda module, args: calls.append(int(args[1][0])))
    starts = []
    original_sample = DDIMSampler.sample

    def recording_sample(self, denoise_fn, z_T, *args, **kwargs):
        starts.append(z_T.clone())
        return original_sample(self, denoise_fn, z_T, *args, **kwargs)

    monkeypatch.setattr(enhancer_module.DDIMSampler, "sample", recording_sample)

    enhancer.enhance(source, strength=1.0, seed=5)
    full_calls, full_start = list(calls), starts[-1]
    calls.clear()
    enhancer.enhance(source, strength=0.5, seed=5)
    half_calls, half_start = list(calls), starts[-1]

    sampler = DDIMSampler(enhancer.schedule, num_inference_steps=4)
    assert sorted(set(full_calls), reverse=True) == sampler.timesteps
    assert sorted(set(half_calls), reverse=True) == sampler.timesteps[2:]  # the low-noise half
    assert len(half_calls) * 2 == len(full_calls)  # U-Net evaluations (windows per step x steps)

    padded, _ = enhancer._pad(source[None])
    with torch.no_grad():
        condition = enhancer.encode(enhancer.windows.to_channels(padded)) * enhancer.scale_factor
    noise = torch.randn(condition.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(full_start, noise)
    expected = enhancer.schedule.add_noise(condition, noise, sampler.timesteps[2])
    torch.testing.assert_close(half_start, expected, rtol=1e-5, atol=1e-5)


def test_strength_out_of_range_is_refused():
    enhancer = tiny_enhancer()
    with pytest.raises(ValueError, match="strength"):
        enhancer.enhance(random_hu((1, 8, 64, 64)), strength=0.0)


def test_precision_is_a_setting_and_outputs_stay_float32():
    source = random_hu((1, 1, 8, 64, 64))
    out = tiny_enhancer(precision="bf16")(source)
    assert out.dtype == torch.float32 and out.shape == source.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="precision"):
        tiny_enhancer(precision="fp8")
    with pytest.raises(ValueError, match="CUDA"):
        tiny_enhancer(precision="fp16")(source)  # CPU here


@pytest.mark.parametrize("fidelity", [False, True])
def test_bf16_output_is_not_quantised(fidelity):
    """bf16 inference keeps the decoder's output layers in float32: the full-range channel spans
    4096 HU in [-1, 1], so a bfloat16 output would move in ~8 HU steps for dense bone (0.72 in
    that channel, about 2500 HU, where the soft-tissue and lung channels saturate)."""
    enhancer = tiny_enhancer()
    if fidelity:
        torch.manual_seed(0)
        enhancer.autoencoder = VideoVAE(
            channels=(8, 16, 16, 16), norm_num_groups=4, num_res_blocks=1, num_mid_blocks=1, fidelity_channels=[8]
        ).eval()
    with torch.no_grad():  # dense bone everywhere, barely touched by the features
        enhancer.autoencoder.decoder.conv_out.weight.mul_(1e-3)
        enhancer.autoencoder.decoder.conv_out.bias.copy_(torch.tensor([0.72, 1.0, 1.0]))
    source = random_hu((1, 8, 64, 64))
    fp32 = enhancer.enhance(source).hu
    enhancer.precision = "bf16"
    bf16 = enhancer.enhance(source).hu
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 1.0  # HU; a bf16 output layer is off by up to 4 HU here


def test_output_switches_are_checked_wherever_they_enter(tmp_path):
    # one table of checks serves the constructor, each call and from_file: a word a command line
    # passes is read as what it says, and a bad value is refused in one line naming the setting
    enhancer = tiny_enhancer(residual="false", fidelity_weight=1)
    assert enhancer.residual is False and enhancer.fidelity_weight == 1.0
    with pytest.raises(SettingError, match="residual = 'maybe': "):
        tiny_enhancer(residual="maybe")
    with pytest.raises(SettingError, match="fidelity_weight = nan: "):
        enhancer.enhance(random_hu((1, 8, 64, 64)), fidelity_weight=float("nan"))
    enhancer.save(tmp_path / "model.pt")
    assert CTEnhancer.from_file(tmp_path / "model.pt", residual="true").residual is True
    with pytest.raises(SettingError, match="fidelity_weight = 'x': "):
        CTEnhancer.from_file(tmp_path / "model.pt", fidelity_weight="x")
    with pytest.raises(SettingError, match="fidelity_weight = -1: a number >= 0"):
        tiny_enhancer(fidelity_weight=-1)
