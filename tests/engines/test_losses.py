"""Reconstruction losses of the VAE (bundle/engines/losses.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bundle.engines.losses import (
    ReconstructionLoss,
    _flat_tissue,
    radial_power_spectrum,
)
from bundle.metrics.nps import noise_power_spectrum


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


WINDOWS = [[-1024, 3072], [-160, 240], [-1000, 200]]


def _channels(hu: torch.Tensor) -> torch.Tensor:
    from bundle.data.windows import HUWindows

    return HUWindows(WINDOWS).to_channels(hu, channel_dim=1)


def test_mse_is_the_mean_squared_error():
    recon, target = _pair()
    total, terms = ReconstructionLoss(l1=0, mse=1)(recon, target)
    assert set(terms) == {"mse"} and float(total) == pytest.approx(float(F.mse_loss(recon, target)), rel=1e-6)


def test_class_bias_is_the_level_error_of_each_class():
    """Fat read 0.02 low in every channel, soft tissue exact: half the classes present are off by 0.02."""
    hu = torch.full((1, 1, 8, 32, 32), 60.0)
    hu[..., :16] = -100.0
    target = _channels(hu)
    recon = target.clone()
    recon[..., :16] -= 0.02
    loss = ReconstructionLoss(l1=0, class_bias=1, hu_windows=WINDOWS, class_smoothing=1)
    total, terms = loss(recon, target)
    assert set(terms) == {"class_bias"} and float(total) == pytest.approx(0.01, rel=1e-5)
    assert float(loss(target, target)[0]) == 0.0
    # zero-mean noise within a class costs (almost) nothing: a level error is what it measures
    g = torch.Generator().manual_seed(0)
    noisy = target + 0.02 * torch.randn(target.shape, generator=g)
    assert float(loss(noisy, target)[0]) < 0.002
    recon.requires_grad_(True)
    loss(recon, target)[0].backward()
    assert recon.grad[..., :16].abs().sum() > 0 and recon.grad[..., 16:].abs().sum() == 0


def test_class_bias_classes_the_smoothed_target_so_its_noise_does_not_bias_the_class():
    """An ideal denoiser (the clean volume) against a noisy target near a class edge (100 HU, soft
    tissue up to 120): classed by the raw target the selected voxels' noise is biased low (~-6 HU);
    classed by the smoothed target it is not."""
    g = torch.Generator().manual_seed(0)
    clean = torch.full((2, 1, 8, 64, 64), 100.0)
    target_hu = clean + 20.0 * torch.randn(clean.shape, generator=g)
    to_hu_units = 400 / 2  # the soft-tissue channel: 2 units over 400 HU
    biases = {}
    for k in (1, 5):
        loss = ReconstructionLoss(l1=0, class_bias=1, hu_windows=WINDOWS, class_smoothing=k, channel_weights=[0, 1, 0])
        biases[k] = float(loss(_channels(clean), _channels(target_hu))[0]) * to_hu_units
    assert biases[1] > 3.0 and biases[5] < 0.5, biases


def test_class_bias_needs_the_windows():
    with pytest.raises(ValueError, match="hu_windows"):
        ReconstructionLoss(class_bias=1)
    with pytest.raises(ValueError, match="class_smoothing"):
        ReconstructionLoss(class_bias=1, hu_windows=WINDOWS, class_smoothing=4)


def _disc_phantom(contrast: float, radius: int = 10) -> torch.Tensor:
    """HU (1, 1, 8, 48, 48): water with one disc of `contrast` HU at the centre."""
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    disc = ((yy - 23.5) ** 2 + (xx - 23.5) ** 2) < radius**2
    return (contrast * disc.float()).expand(1, 1, 8, 48, 48).clone()


def test_edge_weight_is_one_on_an_edge_above_the_threshold_and_zero_on_flat_tissue():
    """A 100 HU fat-water edge and a 1000 HU bone edge weigh alike (both past 20 HU per pixel
    after the 5-pixel box); the flat water and the disc's core weigh nothing."""
    loss = ReconstructionLoss(l1=0, edge=1, hu_windows=WINDOWS)
    for contrast in (-100.0, 1000.0):
        weight = loss._edge_weight(loss._smoothed_hu(_channels(_disc_phantom(contrast))))
        assert weight.shape == (1, 1, 8, 48, 48)
        assert float(weight[0, 0, :, 23, 12:16].min()) == pytest.approx(1.0)  # the rim, every slice
        assert float(weight[..., 23, 23].max()) == 0.0 and float(weight[..., 2, 2].max()) == 0.0  # core, water
    # a 20 HU lesion's edge stays under the threshold: weighed in proportion
    weak = float(loss._edge_weight(loss._smoothed_hu(_channels(_disc_phantom(20.0))))[0, 0, 0, 23, 13])
    assert 0.1 < weak < 0.5


def test_edge_term_pays_a_blurred_edge_more_than_the_same_error_on_flat_tissue():
    """Two reconstructions with the same mean squared error: one blurs the fat disc's rim, the other
    spreads that error over the water. Only the edge term tells them apart, by the rim's share."""
    target_hu = _disc_phantom(-100.0)
    target = _channels(target_hu)
    blurred_hu = F.avg_pool3d(F.pad(target_hu, (2, 2, 2, 2, 0, 0), mode="replicate"), (1, 5, 5), stride=1)
    blurred = _channels(blurred_hu)
    error = blurred - target
    flat = target + error.square().mean().sqrt() * torch.where(torch.arange(48) % 2 == 0, 1.0, -1.0)
    loss = ReconstructionLoss(l1=0, mse=1, edge=1, hu_windows=WINDOWS)
    _, on_edge = loss(blurred, target)
    _, on_flat = loss(flat, target)
    assert on_edge["mse"] == pytest.approx(on_flat["mse"], rel=1e-3)
    assert on_edge["edge"] > 5 * on_flat["edge"]
    assert loss(target, target)[1]["edge"] == 0.0
    # the weight is the target's: no gradient flows into it, the error's gradient reaches the rim only
    recon = blurred.clone().requires_grad_(True)
    loss_edge = ReconstructionLoss(l1=0, edge=1, hu_windows=WINDOWS)
    loss_edge(recon, target)[0].backward()
    assert recon.grad[..., 23, 23].abs().sum() == 0 and recon.grad[..., 2, 2].abs().sum() == 0
    assert recon.grad[..., 23, 13].abs().sum() > 0


def test_edge_needs_the_windows_and_a_positive_threshold():
    with pytest.raises(ValueError, match="hu_windows"):
        ReconstructionLoss(edge=1)
    with pytest.raises(ValueError, match="edge_threshold"):
        ReconstructionLoss(edge=1, hu_windows=WINDOWS, edge_threshold=0)


def test_lowpass_term_pays_a_lost_lesion_contrast_more_than_white_noise_of_the_same_squared_error():
    """The same mean squared error twice: a faint disc's contrast lost (a low-band error), and
    pixel noise. The lowpass term keeps most of the first and ~1/(4 pi sigma^2) of the second."""
    sigma = 1.0
    target = torch.zeros((1, 1, 8, 48, 48))
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(48), indexing="ij")
    disc = ((yy - 23.5) ** 2 + (xx - 23.5) ** 2 < 3.0**2).float()
    target = target + 0.05 * disc  # the lesion
    lost = torch.zeros_like(target)  # its contrast gone
    noisy = target + (lost - target).square().mean().sqrt() * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    loss = ReconstructionLoss(l1=0, mse=1, lowpass=1, lowpass_sigma=sigma)
    _, on_lesion = loss(lost, target)
    _, on_noise = loss(noisy, target)
    assert on_lesion["mse"] == pytest.approx(on_noise["mse"], rel=0.05)
    assert on_lesion["lowpass"] > 0.5 * on_lesion["mse"]
    assert on_noise["lowpass"] == pytest.approx(on_noise["mse"] / (4 * torch.pi * sigma**2), rel=0.2)
    assert loss(target, target)[1]["lowpass"] == 0.0


def test_lowpass_needs_a_positive_sigma():
    with pytest.raises(ValueError, match="lowpass_sigma"):
        ReconstructionLoss(lowpass=1, lowpass_sigma=0)
    assert ReconstructionLoss(lowpass=0, lowpass_sigma=0).weights["lowpass"] == 0.0  # off: not read


def test_lesion_term_is_the_squared_error_on_the_map_and_needs_the_map():
    recon, target = _pair()
    lesion = torch.zeros((2, 1, 8, 32, 32))
    lesion[:, :, 2:5, 10:20, 10:20] = 1.0
    loss = ReconstructionLoss(l1=0, mse=1, lesion=10)
    total, terms = loss(recon, target, lesion=lesion)
    expected = (lesion * (recon - target).square()).mean()
    assert terms["lesion"] == pytest.approx(float(expected), rel=1e-5)
    assert float(total) == pytest.approx(terms["mse"] + 10 * terms["lesion"], rel=1e-5)
    # an error outside the map costs the term nothing; inside it, its full square
    outside = target.clone()
    outside[:, :, 6:, :5, :5] += 0.3
    assert loss(outside, target, lesion=lesion)[1]["lesion"] == 0.0
    with pytest.raises(ValueError, match="lesion_insertion"):
        loss(recon, target)
    with pytest.raises(ValueError, match="lesion map of shape"):
        loss(recon, target, lesion=lesion[:, :, :4])
    assert "lesion" not in ReconstructionLoss()(recon, target, lesion=lesion)[1]  # off: not computed


def test_transfer_term_prices_the_response_to_the_lesions_not_the_noise():
    recon, target = _pair()
    lesion = torch.zeros((2, 1, 8, 32, 32))
    lesion[:, :, 2:5, 10:20, 10:20] = 1.0
    signal = 0.05 * lesion.expand_as(recon)
    loss = ReconstructionLoss(l1=0, mse=1, transfer=10)
    # a response that passes the lesions whole costs nothing, whatever the reconstruction's error
    assert loss(recon, target, lesion=lesion, response=signal, signal=signal)[1]["transfer"] == 0.0
    total, terms = loss(recon, target, lesion=lesion, response=0.5 * signal, signal=signal)
    expected = (lesion * (0.5 * signal - signal).square()).mean()
    assert terms["transfer"] == pytest.approx(float(expected), rel=1e-5)
    assert float(total) == pytest.approx(terms["mse"] + 10 * terms["transfer"], rel=1e-5)
    with pytest.raises(ValueError, match="lesion_insertion"):
        loss(recon, target, response=signal, signal=signal)
    with pytest.raises(ValueError, match="response="):
        loss(recon, target, lesion=lesion)
    assert "transfer" not in ReconstructionLoss()(recon, target, lesion=lesion)[1]  # off: not computed


def _coloured_noise(seed, shape=(2, 1, 8, 48, 64), smooth=0.0):
    """Gaussian noise, low-passed in-plane by exp(-smooth f^2) (f in cycles per pixel)."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fy, fx = torch.fft.fftfreq(shape[-2], dtype=torch.float64), torch.fft.fftfreq(shape[-1], dtype=torch.float64)
    gain = torch.exp(-smooth * (fy[:, None] ** 2 + fx[None, :] ** 2))
    return torch.fft.ifft2(torch.fft.fft2(noise) * gain).real


def test_radial_power_spectrum_is_the_nps_radial_average_of_each_sample():
    """One ring definition for the loss and the evaluation: the metric's radial NPS of the crop's
    slices (pixel 1, each slice's mean removed) is the loss's spectrum, a non-square crop included."""
    x = _coloured_noise(0, smooth=30.0) + 5.0  # an offset: the mean is not power
    power = radial_power_spectrum(x)
    assert power.shape == (2, 1, 24)
    for b in range(2):
        reference = noise_power_spectrum(x[b, 0].numpy(), 1.0, detrend="mean")
        assert power[b, 0, 1:].numpy() == pytest.approx(reference.radial[1:], rel=1e-9)
    assert torch.equal(radial_power_spectrum(x, 0.5), power[..., 12:])


def test_texture_term_asks_for_the_targets_power_per_frequency_not_its_noise():
    """Another draw of the target's noise costs ~nothing (the texture is right, every error term
    pays it in full); the same draw smoothed (the conditional mean's plastic look) costs a lot."""
    loss = ReconstructionLoss(l1=0, mse=1, texture=1)
    target = _coloured_noise(1, smooth=5.0).float()
    _, other_draw = loss(_coloured_noise(2, smooth=5.0).float(), target)
    _, smoothed = loss(_coloured_noise(1, smooth=60.0).float(), target)
    assert loss(target, target)[1]["texture"] == 0.0
    assert other_draw["texture"] < 0.1 and other_draw["mse"] > smoothed["mse"]
    assert smoothed["texture"] > 1.0


def test_texture_gradient_restores_the_lost_high_frequencies():
    loss = ReconstructionLoss(l1=0, texture=1, texture_min_frequency=0.25)
    target = _coloured_noise(3).float()
    recon = _coloured_noise(3, smooth=60.0).float().requires_grad_(True)
    total, _ = loss(recon, target)
    total.backward()
    stepped = (recon - 0.5 * recon.grad / recon.grad.abs().max()).detach()
    before, after = radial_power_spectrum(recon.detach(), 0.5), radial_power_spectrum(stepped, 0.5)
    assert (after > before).all()
    assert float(loss(stepped, target)[0]) < float(total.detach())


def test_texture_band_must_lie_below_nyquist():
    with pytest.raises(ValueError, match="texture_min_frequency"):
        ReconstructionLoss(texture=1, texture_min_frequency=1.0)


def _water_with_bone(noise_seed: int | None, smooth: float = 0.0) -> torch.Tensor:
    """Window channels (1, 3, 8, 64, 64) of water with a 1000 HU disc and 10 HU noise (none for None)."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    hu = (1000.0 * (((yy - 20) ** 2 + (xx - 20) ** 2) < 8**2).float()).expand(1, 1, 8, 64, 64).clone()
    if noise_seed is not None:
        hu = hu + 10.0 * _coloured_noise(noise_seed, shape=(1, 1, 8, 64, 64), smooth=smooth).float()
    return _channels(hu)


def test_flat_texture_reads_only_the_targets_flat_tissue():
    """The flat region is the water away from the bone disc; a reconstruction that differs from the
    target only inside the disc costs the flat term nothing, while the crop's term pays it."""
    target = _water_with_bone(0)
    flat_loss = ReconstructionLoss(l1=0, texture=1, texture_region="flat", hu_windows=WINDOWS)
    flat = _flat_tissue(flat_loss._smoothed_hu(target))
    assert float(flat[0, 0, :, 20, 20].max()) == 0.0 and float(flat[0, 0, :, 55, 55].min()) == 1.0
    assert 0.5 < float(flat.mean()) < 0.9
    sharper = target.clone()
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    core = (((yy - 20) ** 2 + (xx - 20) ** 2) < 6**2).expand_as(sharper)
    sharper[core] = sharper[core] * 0.9
    assert flat_loss(sharper, target)[1]["texture"] == 0.0
    assert ReconstructionLoss(l1=0, texture=1)(sharper, target)[1]["texture"] > 0.01


def test_flat_texture_asks_for_the_targets_noise_power_in_flat_tissue():
    """Another draw of the target's noise costs little, the same draw smoothed a lot; one gradient
    step on the smoothed one raises its flat tissue's high frequencies."""
    loss = ReconstructionLoss(l1=0, texture=1, texture_region="flat", hu_windows=WINDOWS)
    target = _water_with_bone(1)
    other = loss(_water_with_bone(2), target)[1]["texture"]
    smoothed = _water_with_bone(1, smooth=60.0).requires_grad_(True)
    total, terms = loss(smoothed, target)
    assert other < 0.3 and terms["texture"] > 1.0
    total.backward()
    stepped = (smoothed - 0.5 * smoothed.grad / smoothed.grad.abs().max()).detach()
    assert float(loss(stepped, target)[0]) < float(total.detach())


def test_texture_region_is_checked():
    with pytest.raises(ValueError, match="texture_region"):
        ReconstructionLoss(texture=1, texture_region="lungs")
    with pytest.raises(ValueError, match="hu_windows"):
        ReconstructionLoss(texture=1, texture_region="flat")
