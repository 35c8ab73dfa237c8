"""The output's low band from the source (``source_lowpass_sigma``, per tissue level with
``source_lowpass_levels``): what it removes, what it keeps."""

from __future__ import annotations

import math

import pytest
import torch

from bundle.inference import CTEnhancer
from bundle.inference.low_frequency import (
    MIN_SUPPORT,
    TISSUE_LEVELS,
    keep_source_low_frequencies,
    level_weights,
)
from bundle.utils.validation import SettingError
from tests.inference.test_enhancer import random_hu, tiny_enhancer


def checkerboard(shape) -> torch.Tensor:
    h, w = shape[-2:]
    board = ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 * 2 - 1).float()
    return board.expand(shape).clone()


def test_a_constant_hu_error_of_the_output_is_removed():
    source = random_hu((1, 1, 4, 48, 40))
    fixed = keep_source_low_frequencies(source - 7.0, source, sigma=3.0)
    assert float((fixed - source).abs().max()) < 0.01


def test_the_highest_frequencies_of_the_output_are_kept_up_to_the_borders():
    source = torch.zeros(1, 1, 3, 64, 64)
    output = source + 10 * checkerboard(source.shape)
    assert torch.allclose(keep_source_low_frequencies(output, source, sigma=3.0), output, atol=1e-3)


def test_white_noise_in_the_source_comes_back_as_its_low_band_share():
    # a 2D Gaussian of sigma s passes 1 / (4 pi s^2) of white noise's variance
    noise = torch.randn(1, 1, 8, 256, 256, generator=torch.Generator().manual_seed(0)) * 20
    back = keep_source_low_frequencies(torch.zeros_like(noise), noise, sigma=3.0)
    assert float(back.var() / noise.var()) == pytest.approx(1 / (4 * math.pi * 9), rel=0.15)


def test_sigma_zero_is_the_output_itself_and_shapes_must_match():
    output = torch.ones(1, 1, 2, 16, 16)
    assert keep_source_low_frequencies(output, torch.zeros_like(output), 0.0) is output
    with pytest.raises(ValueError, match="differ in shape"):
        keep_source_low_frequencies(output, torch.zeros(1, 1, 2, 16, 8), 3.0)


def test_the_setting_changes_the_enhancers_output_and_travels_in_the_model_file(tmp_path):
    source = random_hu((1, 16, 64, 64))
    plain = tiny_enhancer()
    with_band = tiny_enhancer(source_lowpass_sigma=3.0)
    a, b = plain.enhance(source).hu, with_band.enhance(source).hu
    assert torch.allclose(b, keep_source_low_frequencies(a, source, 3.0), atol=1e-3)
    assert not torch.allclose(a, b, atol=1.0)
    with_band.save(tmp_path / "model.pt")
    assert CTEnhancer.from_file(tmp_path / "model.pt").source_lowpass_sigma == 3.0
    assert CTEnhancer.from_file(tmp_path / "model.pt", source_lowpass_sigma=0).source_lowpass_sigma == 0.0


def insert_and_bone(shape=(1, 1, 3, 96, 96)):
    """A water slab with a 60 HU disc and a 4 px cortex of 1200 HU: the truth, and masks of each."""
    yy, xx = torch.meshgrid(torch.arange(shape[-2]), torch.arange(shape[-1]), indexing="ij")
    disc = (yy - 40) ** 2 + (xx - 40) ** 2 < 36
    cortex = (xx >= 70) & (xx < 74)
    truth = torch.zeros(shape)
    truth[..., disc] = 60.0
    truth[..., cortex] = 1200.0
    return truth, disc, cortex


def test_tissue_levels_remove_a_materials_level_error_where_one_gaussian_spreads_it():
    truth, disc, cortex = insert_and_bone()
    output = truth.clone()
    output[..., disc] -= 4.0  # the insert reads low, the cortex high: errors at the materials' own scale
    output[..., cortex] += 6.0
    water = ~disc & ~cortex
    plain = keep_source_low_frequencies(output, truth, 3.0) - truth
    levels = keep_source_low_frequencies(output, truth, 3.0, TISSUE_LEVELS) - truth
    # one Gaussian keeps a third of the insert's error and more than half the cortex's, and moves the water
    assert float(plain[..., disc].mean()) < -1.0 and float(plain[..., cortex].mean()) > 3.0
    assert float(plain[..., water].abs().max()) > 1.0
    # per level the insert's error is gone, the thin cortex's mostly, and the water is not moved
    assert abs(float(levels[..., disc].mean())) < 0.3
    assert 0 < float(levels[..., cortex].mean()) < 2.0
    assert float(levels[..., water].abs().max()) < 0.5


def test_tissue_levels_are_one_gaussian_inside_one_material_and_pass_its_noise_as_that_does():
    noise = torch.randn(1, 1, 4, 128, 128, generator=torch.Generator().manual_seed(1)) * 20
    output = torch.full_like(noise, 40.0)  # soft tissue between the 0 and 60 HU levels
    plain = keep_source_low_frequencies(output, output + noise, 3.0)
    levels = keep_source_low_frequencies(output, output + noise, 3.0, TISSUE_LEVELS)
    assert torch.allclose(levels, plain, atol=1e-3)


def test_level_weights_sum_to_one_and_bad_levels_are_refused():
    guide = torch.linspace(-2048, 3072, 513)
    total = sum(level_weights(guide, TISSUE_LEVELS))
    assert torch.allclose(total, torch.ones_like(guide))
    with pytest.raises(ValueError, match="ascending"):
        list(level_weights(guide, (0.0, -100.0)))
    with pytest.raises(SettingError, match="source_lowpass_levels = "):
        tiny_enhancer(source_lowpass_levels=[60, 0])
    with pytest.raises(SettingError, match="'tissue'"):
        tiny_enhancer(source_lowpass_levels="bone")


def test_the_levels_setting_changes_the_output_and_travels_in_the_model_file(tmp_path):
    source = random_hu((1, 16, 64, 64))
    plain = tiny_enhancer(source_lowpass_sigma=3.0)
    tissue = tiny_enhancer(source_lowpass_sigma=3.0, source_lowpass_levels="tissue")
    assert tissue.source_lowpass_levels == TISSUE_LEVELS
    a, b = plain.enhance(source).hu, tissue.enhance(source).hu
    assert not torch.allclose(a, b, atol=0.1)
    tissue.save(tmp_path / "model.pt")
    loaded = CTEnhancer.from_file(tmp_path / "model.pt")
    assert loaded.source_lowpass_levels == TISSUE_LEVELS
    without = CTEnhancer.from_file(tmp_path / "model.pt", source_lowpass_levels="none")
    assert without.source_lowpass_levels == ()
    assert not torch.allclose(loaded.enhance(source).hu, without.enhance(source).hu, atol=0.1)


def test_a_higher_support_threshold_lets_less_of_a_thin_levels_own_noise_back():
    # a 2 px band of 60 HU in water: its own level holds little of the Gaussian's mass, so its own
    # mean is noisy; the threshold leans it towards the plain band's, and at 1 every band pixel does
    noise = torch.randn(1, 1, 8, 96, 96, generator=torch.Generator().manual_seed(2)) * 20
    output = torch.zeros_like(noise)
    output[..., 47:49, :] = 60.0
    low = keep_source_low_frequencies(output, output + noise, 3.0, TISSUE_LEVELS, min_support=0.05) - output
    high = keep_source_low_frequencies(output, output + noise, 3.0, TISSUE_LEVELS, min_support=1.0) - output
    plain = keep_source_low_frequencies(output, output + noise, 3.0) - output
    band = (..., slice(47, 49), slice(None))
    assert float(high[band].var()) < 0.6 * float(low[band].var())
    assert float(high[band].var()) < 1.5 * float(plain[band].var())


def test_the_support_threshold_travels_in_the_model_file_and_is_checked(tmp_path):
    tissue = tiny_enhancer(source_lowpass_sigma=3.0, source_lowpass_levels="tissue")
    assert tissue.source_lowpass_min_support == MIN_SUPPORT
    strict = tiny_enhancer(source_lowpass_sigma=3.0, source_lowpass_levels="tissue", source_lowpass_min_support=1)
    strict.save(tmp_path / "model.pt")
    assert CTEnhancer.from_file(tmp_path / "model.pt").source_lowpass_min_support == 1.0
    assert CTEnhancer.from_file(tmp_path / "model.pt", source_lowpass_min_support=0.5).source_lowpass_min_support == 0.5
    for bad in (0, 1.5, "1", True):
        with pytest.raises(SettingError, match="source_lowpass_min_support = .*\\(0, 1\\]"):
            tiny_enhancer(source_lowpass_min_support=bad)


def test_along_the_slices_the_band_keeps_a_level_error_out_and_less_noise_in(monkeypatch):
    # noise drawn slice by slice averages out along z; a level error the slices share is still removed
    truth, disc, cortex = insert_and_bone((1, 1, 40, 96, 96))
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(3)) * 20
    output = truth.clone()
    output[..., disc] -= 4.0
    per_slice = keep_source_low_frequencies(output, truth + noise, 3.0, TISSUE_LEVELS) - truth
    across = keep_source_low_frequencies(output, truth + noise, 3.0, TISSUE_LEVELS, sigma_z=2.0) - truth
    water = ~disc & ~cortex
    assert abs(float(across[..., disc].mean())) < 0.3
    # a 1D Gaussian of sigma 2 passes 1 / (2 sqrt(pi) 2) = 0.14 of white noise's variance
    assert float(across[..., water].var() / per_slice[..., water].var()) == pytest.approx(0.14, rel=0.2)
    # the slice blocks that bound memory join without a seam
    monkeypatch.setattr("bundle.inference.low_frequency.SLICE_BLOCK_Z", 1000)
    whole = keep_source_low_frequencies(output, truth + noise, 3.0, TISSUE_LEVELS, sigma_z=2.0) - truth
    assert torch.allclose(across, whole, atol=1e-3)


def test_the_slice_sigma_travels_in_the_model_file(tmp_path):
    tiny_enhancer(source_lowpass_sigma=3.0, source_lowpass_levels="tissue", source_lowpass_sigma_z=2).save(tmp_path / "m.pt")
    assert CTEnhancer.from_file(tmp_path / "m.pt").source_lowpass_sigma_z == 2.0
    assert CTEnhancer.from_file(tmp_path / "m.pt", source_lowpass_sigma_z=0).source_lowpass_sigma_z == 0.0
    with pytest.raises(SettingError, match="source_lowpass_sigma_z = -1: "):
        tiny_enhancer(source_lowpass_sigma_z=-1)
