"""The physicists' measures on synthetic cases with a known answer: NPS, TTF, d', HU accuracy."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage

from bundle.metrics import (
    class_masks,
    cnr,
    hu_accuracy,
    noise_power_spectrum,
    npw_detectability,
    pw_detectability,
    square_rois,
    task_transfer_function,
)

PIXEL_MM = 0.7


def white_noise(sigma=10.0, shape=(64, 32, 32), seed=0):
    return np.random.default_rng(seed).normal(0.0, sigma, shape)


def test_nps_of_white_noise_is_flat_and_integrates_to_the_variance():
    nps = noise_power_spectrum(white_noise(), PIXEL_MM)
    expected = 10.0**2 * PIXEL_MM**2  # sigma^2 * pixel area, at every frequency
    assert nps.integral == pytest.approx(nps.variance, rel=1e-9)
    assert nps.variance == pytest.approx(100.0, rel=0.05)
    assert nps.radial[0] < 1e-9  # the ROI means are removed: no power at zero frequency
    assert np.allclose(nps.radial[1:], expected, rtol=0.15)  # flat, to the estimate's noise
    # white noise spreads power evenly: its mean frequency is that of the frequency grid itself
    grid = np.hypot(*np.meshgrid(nps.fy, nps.fx, indexing="ij")).mean()
    assert nps.mean_frequency == pytest.approx(grid, rel=0.03)


def test_smoothing_moves_noise_power_to_low_frequencies():
    noise = white_noise()
    smooth = ndimage.gaussian_filter(noise, (0, 1.0, 1.0), mode="wrap")
    white, smoothed = noise_power_spectrum(noise, PIXEL_MM), noise_power_spectrum(smooth, PIXEL_MM)
    assert smoothed.mean_frequency < 0.7 * white.mean_frequency
    assert smoothed.variance < 0.2 * white.variance


def test_share_below_a_cutoff_is_the_area_for_white_noise_and_grows_with_smoothing():
    """What an 8x coarser grid can hold: white noise puts ~(1/8)^2 of its power there."""
    noise = white_noise()
    white = noise_power_spectrum(noise, PIXEL_MM)
    assert white.share_below(1.0) == pytest.approx(1.0)
    # 32-pixel ROIs: |k| <= 2 of k = -16..15 per axis, 25 of 1024 cells, one of them the removed mean
    assert white.share_below(1 / 8) == pytest.approx(24 / 1023, rel=0.25)
    smooth = noise_power_spectrum(ndimage.gaussian_filter(noise, (0, 2.0, 2.0), mode="wrap"), PIXEL_MM)
    assert smooth.share_below(1 / 8) > 3 * white.share_below(1 / 8)


def test_rois_lie_inside_the_mask():
    noise = white_noise(shape=(2, 40, 40))
    mask = np.zeros(noise.shape, bool)
    mask[0, 4:36, 4:36] = True
    rois = square_rois(noise, mask, 16)
    assert rois.shape == (4, 16, 16)  # [4, 36) holds 2 x 2 non-overlapping 16-px ROIs
    expected = [noise[0, r : r + 16, c : c + 16] for r in (4, 20) for c in (4, 20)]
    for roi, want in zip(rois, expected):
        np.testing.assert_array_equal(roi, want)
    assert len(square_rois(noise, mask, 33)) == 0


def disc_image(radius_mm, blur_mm, contrast=500.0, size=96, oversample=8):
    """A disc of ``contrast`` HU (area-sampled at ``oversample``^2 points per pixel), blurred by a
    Gaussian of ``blur_mm``."""
    fine = (np.arange(size * oversample) + 0.5) / oversample - size / 2
    yy, xx = np.meshgrid(fine, fine, indexing="ij")
    disc = (np.hypot(yy, xx) * PIXEL_MM < radius_mm).astype(np.float64)
    disc = disc.reshape(size, oversample, size, oversample).mean(axis=(1, 3)) * contrast
    return ndimage.gaussian_filter(disc, blur_mm / PIXEL_MM), ((size - 1) / 2, (size - 1) / 2)


@pytest.mark.parametrize("blur_mm", [0.6, 1.0])
def test_ttf_of_a_gaussian_blur_matches_its_analytic_mtf(blur_mm):
    """The system is the Gaussian blur times the pixel's own area sampling (a box of one pixel):
    MTF(f) = exp(-2 pi^2 s^2 f^2) * sinc(f * pixel)."""
    image, centre = disc_image(radius_mm=15.0, blur_mm=blur_mm)
    ttf = task_transfer_function(image, centre, 15.0, PIXEL_MM)

    def analytic(f):
        return np.exp(-2 * math.pi**2 * blur_mm**2 * f**2) * np.sinc(f * PIXEL_MM)

    expected = analytic(ttf.frequency)
    usable = expected > 0.1
    assert np.abs(ttf.ttf[usable] - expected[usable]).max() < 0.05
    fine = np.linspace(0, 0.5 / PIXEL_MM, 20001)
    expected_ttf50 = fine[np.argmax(analytic(fine) <= 0.5)]
    assert ttf.ttf50 == pytest.approx(expected_ttf50, rel=0.04)


def test_ttf50_falls_with_more_blur():
    sharp = task_transfer_function(*disc_image(15.0, 0.5), 15.0, PIXEL_MM).ttf50
    blurred = task_transfer_function(*disc_image(15.0, 1.5), 15.0, PIXEL_MM).ttf50
    assert blurred < 0.5 * sharp


def test_detectability_grows_with_contrast_and_falls_with_noise():
    nps = noise_power_spectrum(white_noise(sigma=10.0), PIXEL_MM)
    noisier = noise_power_spectrum(white_noise(sigma=20.0, seed=1), PIXEL_MM)
    d = {c: npw_detectability(nps, 3.0, c) for c in (5.0, 10.0, 20.0)}
    assert d[10.0] == pytest.approx(2 * d[5.0]) and d[20.0] == pytest.approx(4 * d[5.0])
    assert npw_detectability(noisier, 3.0, 10.0) == pytest.approx(d[10.0] / 2, rel=0.1)
    # a known closed form for white noise and an ideal system: d' = C sqrt(pi R^2 / (sigma^2 dx dy))
    expected = 10.0 * math.sqrt(math.pi * 3.0**2 / (nps.variance * PIXEL_MM**2))
    assert d[10.0] == pytest.approx(expected, rel=0.1)
    # a blurring system lowers it
    assert npw_detectability(nps, 3.0, 10.0, ttf=lambda f: np.exp(-2 * (math.pi * 1.0 * f) ** 2)) < d[10.0]


def test_ideal_observer_equals_npw_on_white_noise_and_leads_it_on_coloured_noise():
    # white noise: prewhitening changes nothing, both reach the closed form C sqrt(pi R^2 / (sigma^2 dx dy))
    white = noise_power_spectrum(white_noise(sigma=10.0, shape=(256, 32, 32)), PIXEL_MM, detrend="none")
    expected = 10.0 * math.sqrt(math.pi * 3.0**2 / (white.variance * PIXEL_MM**2))
    assert pw_detectability(white, 3.0, 10.0) == pytest.approx(expected, rel=0.1)
    assert pw_detectability(white, 3.0, 10.0) == pytest.approx(npw_detectability(white, 3.0, 10.0), rel=0.05)
    # CT-like noise (power rising with frequency, each ROI's mean removed: a zero-frequency cell):
    # the ideal observer weighs the quiet low frequencies up, never below NPW (Cauchy-Schwarz), and
    # stays finite; quarter dose (4x the power at every frequency) halves it, as it does NPW's
    rng = np.random.default_rng(2)
    noise = rng.normal(0.0, 10.0, (256, 32, 32))
    coloured = noise - ndimage.gaussian_filter(noise, sigma=(0, 2, 2))
    nps = noise_power_spectrum(coloured, PIXEL_MM, detrend="mean")
    assert nps.nps[0, 0] == pytest.approx(0.0, abs=1e-9)
    ideal, npw = pw_detectability(nps, 3.0, 10.0), npw_detectability(nps, 3.0, 10.0)
    assert math.isfinite(ideal) and 1.2 * npw < ideal < 3 * npw
    quarter = noise_power_spectrum(2.0 * coloured, PIXEL_MM, detrend="mean")
    assert pw_detectability(quarter, 3.0, 10.0) == pytest.approx(ideal / 2, rel=1e-6)
    assert pw_detectability(nps, 3.0, 20.0) == pytest.approx(2 * ideal, rel=1e-9)


def test_ideal_observer_adds_independent_slices_and_is_nan_without_measured_noise():
    nps = noise_power_spectrum(white_noise(sigma=10.0), PIXEL_MM, detrend="mean")
    one = pw_detectability(nps, 3.0, 10.0)
    # four slices through a cylinder with independent noise: d'^2 adds, d' doubles
    assert pw_detectability(nps, [3.0] * 4, 10.0) == pytest.approx(2 * one, rel=1e-9)
    # a sphere's smaller circles add less than its equator repeated
    sphere = [math.sqrt(3.0**2 - dz**2) for dz in (-2.0, 0.0, 2.0)]
    assert one < pw_detectability(nps, sphere, 10.0) < math.sqrt(3) * one
    # both observers leave out the emptied zero frequency: on a flat spectrum they then agree exactly
    flat = np.full_like(nps.nps, 4.0)
    flat[0, 0] = 0.0
    flat_nps = dataclasses.replace(nps, nps=flat)
    assert npw_detectability(flat_nps, 3.0, 10.0) == pytest.approx(pw_detectability(flat_nps, 3.0, 10.0), rel=1e-9)
    # no frequency with noise power measured: nothing to say, not infinity
    for empty in (np.zeros_like(nps.nps), np.full_like(nps.nps, np.nan)):
        silent = dataclasses.replace(nps, nps=empty)
        assert math.isnan(pw_detectability(silent, 3.0, 10.0)) and math.isnan(npw_detectability(silent, 3.0, 10.0))


def test_cnr_of_a_disc_in_noise():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 5.0, (200, 200))
    yy, xx = np.mgrid[:200, :200]
    lesion = np.hypot(yy - 100, xx - 100) < 20
    image[lesion] += 10.0
    background = (np.hypot(yy - 100, xx - 100) > 30) & (np.hypot(yy - 100, xx - 100) < 60)
    assert cnr(image, lesion, background) == pytest.approx(2.0, rel=0.1)


def test_bias_of_a_shifted_volume_is_the_shift_and_the_truth_scores_perfectly():
    truth = np.full((4, 40, 40), -1000.0)
    truth[:, 5:35, 5:35] = 40.0      # soft tissue
    truth[:, 15:25, 15:25] = 1000.0  # bone
    masks = class_masks(truth)
    assert set(masks) == {"air", "soft tissue", "bone"}
    shifted = hu_accuracy(truth + 7.0, truth, masks)
    for name, values in shifted.items():
        assert values["bias"] == pytest.approx(7.0) and values["rmse"] == pytest.approx(7.0), name
    perfect = hu_accuracy(truth, truth, masks)
    assert all(v["bias"] == 0 and v["rmse"] == 0 for v in perfect.values())
    # eroded: the bone mask stays inside the bone, off its edge
    assert masks["bone"][0, 15].sum() == 0 and masks["bone"][0, 16, 16]


def test_label_classes_take_precedence():
    truth = np.zeros((3, 10, 10))
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[:, 2:8, 2:8] = 11
    masks = class_masks(truth, labels, {"bone": [11]}, erode=0)
    assert set(masks) == {"bone"} and masks["bone"].sum() == 3 * 36
