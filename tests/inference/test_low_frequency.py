"""The output's low band from the source (``source_lowpass_sigma``): what it removes, what it keeps."""

from __future__ import annotations

import math

import pytest
import torch

from bundle.inference import CTEnhancer
from bundle.inference.low_frequency import keep_source_low_frequencies
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
