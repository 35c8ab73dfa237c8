"""VolumePhysics on synthetic volumes with a known answer: lesions at an organ's edge and beside a
larger organ, the ideal observer over the slices a lesion crosses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from bundle.data.phantom import LABELS
from bundle.evaluation.physics import MIN_NPS_ROIS, Truth, VolumePhysics, nps_roi_size
from bundle.metrics import npw_detectability, pw_detectability

PIXEL_MM, SLICE_MM = 1.0, 2.0
SHAPE = (12, 64, 64)


def scan(labels, organ_hu, lesion, seed=0):
    """Paint ``organ_hu`` per label and a lesion sphere (``sphere & organ`` as the phantom does),
    blur like a scanner; returns (physics measured on a noisy full-dose scan, clean, noisy input)."""
    labels = labels.copy()
    hu = np.zeros(SHAPE)
    for label, value in organ_hu.items():
        hu[labels == label] = value
    z, y, x = np.meshgrid(*(np.arange(n) * mm for n, mm in zip(SHAPE, (SLICE_MM, PIXEL_MM, PIXEL_MM))), indexing="ij")
    centre = np.multiply(lesion["centre"], (SLICE_MM, PIXEL_MM, PIXEL_MM))
    dz = 0.0 if lesion.get("through_slices") else z - centre[0]  # a QA disc: a cylinder through the volume
    sphere = np.sqrt(dz**2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < lesion["radius_mm"]
    sphere &= labels == lesion["host"]
    hu[sphere] += lesion["contrast_hu"]
    labels[sphere] = LABELS["lesion"]
    clean = ndimage.gaussian_filter(hu, (0.0, 0.6, 0.6))
    rng = np.random.default_rng(seed)
    truth = Truth(pixel_mm=PIXEL_MM, slice_mm=SLICE_MM, clean=clean, labels=labels, lesions=[lesion])
    physics = VolumePhysics(clean + rng.normal(0.0, 10.0, SHAPE), truth, windows=[[-160, 240]])
    return physics, clean, clean + rng.normal(0.0, 20.0, SHAPE)


# a hypodense liver lesion 3 pixels from the lung, centred on slice 1: it crosses slices 0-3 only
EDGE_LESION = {"centre": (1, 32, 27), "radius_mm": 6.0, "contrast_hu": -15.0, "host": LABELS["liver"]}


@pytest.fixture(scope="module")
def edge_case():
    labels = np.full(SHAPE, LABELS["liver"], np.uint8)
    labels[:, :, :24] = LABELS["lung"]
    return scan(labels, {LABELS["liver"]: 60.0, LABELS["lung"]: -800.0}, EDGE_LESION)


def test_lesion_contrast_is_measured_against_its_own_organ(edge_case):
    physics, clean, _ = edge_case
    core, ring = physics.lesion_rois[0]
    # the lesion's annulus crosses the lung, which would read as +800 HU of contrast
    assert (np.rint(physics.truth.labels)[ring] == LABELS["liver"]).all()
    measured = physics.measure(clean)["lesions"][0]["contrast_measured"]
    assert measured == pytest.approx(EDGE_LESION["contrast_hu"], abs=2.0)


def test_host_is_the_organ_around_the_lesion_not_the_larger_neighbour():
    # a spleen strip 14 pixels wide in the liver; the lesion's ring lies mostly in liver (15 HU apart)
    labels = np.full(SHAPE, LABELS["liver"], np.uint8)
    labels[:, :, 25:39] = LABELS["spleen"]
    lesion = {"centre": (6, 32, 32), "radius_mm": 4.0, "contrast_hu": 10.0, "host": LABELS["spleen"]}
    physics, clean, _ = scan(labels, {LABELS["liver"]: 60.0, LABELS["spleen"]: 45.0}, lesion)
    _, ring = physics.lesion_rois[0]
    assert (np.rint(physics.truth.labels)[ring] == LABELS["spleen"]).all()
    assert physics.measure(clean)["lesions"][0]["contrast_measured"] == pytest.approx(10.0, abs=2.0)


def test_ideal_observer_sums_the_slices_a_lesion_crosses(edge_case):
    physics, _, noisy = edge_case
    entry = physics.measure(noisy, ideal=True)["lesions"][0]
    # white noise: prewhitening changes nothing, the two observers agree at the same contrast
    npw_at_nominal = entry["d_prime"] * 15.0 / abs(entry["contrast_measured"])
    assert npw_at_nominal == pytest.approx(entry["d_prime_ideal"], rel=0.1)
    # a 6 mm sphere on 2 mm slices centred on slice 1: dz = 2, 0, 2, 4 mm on slices 0-3, the rest
    # (slice -1) outside the volume
    radii = [math.sqrt(6.0**2 - dz**2) for dz in (2.0, 0.0, 2.0, 4.0)]
    nps = physics.noise_spectrum(noisy)
    assert entry["d_prime_ideal_3d"] == pytest.approx(pw_detectability(nps, radii, 15.0), rel=1e-9)
    assert entry["d_prime_ideal"] == pytest.approx(pw_detectability(nps, 6.0, 15.0), rel=1e-9)
    # an enhancer's output gets no ideal-observer value (its NPS describes no linear system)
    assert "d_prime_ideal" not in physics.measure(noisy)["lesions"][0]


def test_the_noise_spectrum_a_study_reads_is_the_one_the_measures_read(edge_case):
    # scripts/lesion_transfer.py --detectability computes d' from noise_spectrum: the same ROIs and NPS
    # as the evaluation's noise sigma and lesion d'
    physics, clean, noisy = edge_case
    measured = physics.measure(noisy)
    nps = physics.noise_spectrum(noisy)
    rois = physics._noise_rois(noisy, full_dose=False)
    assert nps.num_rois == len(rois) and nps.variance == pytest.approx(np.mean(rois**2), rel=1e-9)
    assert measured["noise"]["sigma"] == pytest.approx(math.sqrt(nps.variance), rel=1e-12)
    entry = measured["lesions"][0]
    assert entry["d_prime"] == pytest.approx(npw_detectability(nps, 6.0, abs(entry["contrast_measured"])), rel=1e-12)
    # the full-dose scan's, against the clean truth, is the measures' full-dose reference
    assert physics.noise_spectrum(physics.target, full_dose=True).variance == pytest.approx(
        physics.full_dose["noise"]["sigma"] ** 2, rel=1e-12)
    assert physics.noise_spectrum(clean).variance == pytest.approx(0.0, abs=1e-6)


def test_nps_rois_are_the_largest_side_that_gives_enough_of_them(edge_case, caplog):
    # a real CT's flat regions: one patch that fits a 16 px ROI and many that fit 8 px ones only; the
    # NPS must not rest on the one large ROI (LIDC's test slab: two ROIs, a second full-dose scan 6 % off)
    flat = np.zeros((2, 64, 64), bool)
    flat[0, :16, :16] = True
    for r in range(0, 60, 10):
        for c in range(0, 60, 10):
            flat[1, r : r + 8, c : c + 8] = True  # 36 squares of 8 px, 2 px apart
    assert nps_roi_size(flat) == 8 and MIN_NPS_ROIS <= 4 + 36
    assert nps_roi_size(flat, min_rois=1) == 16  # the rule before: the largest that fits at all
    # too few at every side: the side whose ROIs cover the most area, with a warning that says so
    with caplog.at_level("WARNING"):
        assert nps_roi_size(flat[:1]) == 16
    assert "fewer than" in caplog.text
    assert nps_roi_size(np.zeros((2, 64, 64), bool)) is None
    # the evaluation's volumes use it: the labelled liver fits plenty of the largest side
    physics = edge_case[0]
    assert physics.roi_size == nps_roi_size(physics.flat) == 16


def test_contrast_kept_is_the_share_of_the_lesions_contrast_an_output_keeps(edge_case):
    """A smoother that halves the lesion's contrast keeps 0.5 of it, however quiet its output;
    the clean truth keeps all of it."""
    physics, clean, _ = edge_case
    assert physics.measure(clean)["lesion_summary"]["contrast_kept"] == pytest.approx(1.0, abs=1e-9)
    labels = np.rint(physics.truth.labels)
    liver = np.where(labels == LABELS["lesion"], 60.0, clean)  # the lesion painted over with its organ
    halved = liver + 0.5 * (clean - liver)
    summary = physics.measure(halved)["lesion_summary"]
    assert summary["contrast_kept"] == pytest.approx(0.5, abs=0.02)
    assert physics.measure(halved)["lesions"][0]["contrast_truth"] == pytest.approx(
        physics.measure(clean)["lesions"][0]["contrast_measured"])


def test_a_qa_disc_runs_through_every_slice():
    labels = np.full(SHAPE, LABELS["water"], np.uint8)
    disc = {"centre": (6, 32, 32), "radius_mm": 4.0, "contrast_hu": 10.0, "host": LABELS["water"],
            "through_slices": True}
    physics, _, noisy = scan(labels, {LABELS["water"]: 0.0}, disc)
    entry = physics.measure(noisy, ideal=True)["lesions"][0]
    # the same disc on all 12 slices with independent noise: sqrt(12) times one slice's
    assert entry["d_prime_ideal"] > 1.0
    assert entry["d_prime_ideal_3d"] == pytest.approx(math.sqrt(12) * entry["d_prime_ideal"], rel=1e-9)


def test_ttf_inserts_are_chosen_by_contrast_against_the_body_around_them():
    """A QA variant's water is not at 0 HU: a -97 HU fat insert in a +30 HU body has a 127 HU edge
    and gets a TTF, a +60 HU insert in that body (30 HU) does not, whatever their nominal HU."""
    labels = np.full(SHAPE, LABELS["water"], np.uint8)
    yy, xx = np.ogrid[: SHAPE[1], : SHAPE[2]]
    hu = np.full(SHAPE, 30.0)
    inserts = [{"name": "fat", "centre": (20.0, 20.0), "radius_mm": 8.0, "hu": -97.0},
               {"name": "soft tissue", "centre": (44.0, 44.0), "radius_mm": 8.0, "hu": 60.0}]
    for insert in inserts:
        disc = np.hypot(yy - insert["centre"][0], xx - insert["centre"][1]) < insert["radius_mm"] / PIXEL_MM
        hu[:, disc], labels[:, disc] = insert["hu"], LABELS["insert"]
    clean = ndimage.gaussian_filter(hu, (0.0, 0.6, 0.6))
    noisy = clean + np.random.default_rng(0).normal(0.0, 10.0, SHAPE)
    truth = Truth(pixel_mm=PIXEL_MM, slice_mm=SLICE_MM, clean=clean, labels=labels, inserts=inserts)
    physics = VolumePhysics(noisy, truth, windows=[[-160, 240]])
    assert [i["name"] for i in physics.ttf_inserts] == ["fat"]
    ttf = physics.measure(clean)["ttf50"]
    assert set(ttf["per_insert"]) == {"fat"} and 0 < ttf["mean"] < 0.5 / PIXEL_MM
