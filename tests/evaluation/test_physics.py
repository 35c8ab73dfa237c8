"""VolumePhysics on a synthetic volume with a known answer: a lesion at an organ's edge."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from bundle.data.phantom import LABELS
from bundle.evaluation.physics import Truth, VolumePhysics
from bundle.metrics import noise_power_spectrum, pw_detectability

PIXEL_MM, SLICE_MM = 1.0, 2.0
LESION = {"centre": (6, 32, 27), "radius_mm": 6.0, "contrast_hu": -15.0}


@pytest.fixture(scope="module")
def edge_case():
    """Lung (-800 HU) left of column 24, liver (60 HU) right of it, a hypodense lesion in the liver
    3 pixels from the edge; blurred like a scanner, then white noise."""
    shape = (12, 64, 64)
    labels = np.full(shape, LABELS["liver"], np.uint8)
    labels[:, :, :24] = LABELS["lung"]
    hu = np.where(labels == LABELS["liver"], 60.0, -800.0)
    z, y, x = np.meshgrid(*(np.arange(n) * mm for n, mm in zip(shape, (SLICE_MM, PIXEL_MM, PIXEL_MM))), indexing="ij")
    centre = np.multiply(LESION["centre"], (SLICE_MM, PIXEL_MM, PIXEL_MM))
    sphere = (np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < LESION["radius_mm"])
    sphere &= labels == LABELS["liver"]
    hu[sphere] += LESION["contrast_hu"]
    labels[sphere] = LABELS["lesion"]
    clean = ndimage.gaussian_filter(hu, (0.0, 0.6, 0.6))
    noisy = clean + np.random.default_rng(0).normal(0.0, 20.0, shape)
    truth = Truth(pixel_mm=PIXEL_MM, slice_mm=SLICE_MM, clean=clean, labels=labels, lesions=[LESION])
    return VolumePhysics(clean + np.random.default_rng(1).normal(0.0, 10.0, shape), truth, windows=[[-160, 240]]), clean, noisy


def test_lesion_contrast_is_measured_against_its_own_organ(edge_case):
    physics, clean, _ = edge_case
    core, ring = physics.lesion_rois[0]
    # the lesion's annulus crosses the lung, which would read as +800 HU of contrast
    assert np.rint(physics.truth.labels)[ring].max() == LABELS["liver"]
    measured = physics.measure(clean)["lesions"][0]["contrast_measured"]
    assert measured == pytest.approx(LESION["contrast_hu"], abs=2.0)


def test_ideal_observer_sums_the_slices_a_lesion_crosses(edge_case):
    physics, _, noisy = edge_case
    entry = physics.measure(noisy, ideal=True)["lesions"][0]
    # white noise: prewhitening changes nothing, the two observers agree at the same contrast
    npw_at_nominal = entry["d_prime"] * 15.0 / abs(entry["contrast_measured"])
    assert npw_at_nominal == pytest.approx(entry["d_prime_ideal"], rel=0.1)
    assert entry["d_prime_ideal"] < entry["d_prime_ideal_3d"]
    # a 6 mm sphere on 2 mm slices crosses 5 of them (dz = 0, +-2, +-4 mm)
    radii = [math.sqrt(6.0**2 - dz**2) for dz in (-4.0, -2.0, 0.0, 2.0, 4.0)]
    nps = noise_power_spectrum(physics._noise_rois(noisy, full_dose=False), PIXEL_MM, detrend="none")
    assert entry["d_prime_ideal_3d"] == pytest.approx(pw_detectability(nps, radii, 15.0), rel=1e-9)
    assert entry["d_prime_ideal_3d"] < math.sqrt(5) * entry["d_prime_ideal"]
    # an enhancer's output gets no ideal-observer value (its NPS describes no linear system)
    assert "d_prime_ideal" not in physics.measure(noisy)["lesions"][0]
