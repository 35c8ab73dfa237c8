"""Low-dose simulation: noise scaling with dose, HU preservation, determinism, and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bundle.data.phantom import flat_region, make_phantom, water_cylinder
from bundle.data.simulate import (
    calibrated_i0,
    noise_free_scan,
    readings_per_bin,
    scan_geometry,
    simulate_pair,
)
from bundle.data.volume_io import load_ct, save_nifti
from bundle.metrics import find_flat_region, measure_noise_sigma

PIXEL_MM = 2.7
RADIUS_MM = 75.0


@pytest.fixture(scope="module")
def cylinder():
    return water_cylinder((4, 64, 64), PIXEL_MM, radius_mm=RADIUS_MM)


def _far_air(shape, pixel_mm=PIXEL_MM, radius_mm=RADIUS_MM):
    rows, cols = shape[-2:]
    y = (np.arange(rows) - (rows - 1) / 2)[:, None] * pixel_mm
    x = (np.arange(cols) - (cols - 1) / 2)[None, :] * pixel_mm
    return np.broadcast_to(np.hypot(y, x) > radius_mm + 15, shape)


def test_quarter_dose_doubles_noise_in_water(cylinder):
    hu, flat = cylinder
    # A flux where photon noise dominates the round trip's own small pixel pattern.
    sigma = {}
    for dose in (1.0, 0.25):
        source, target = simulate_pair(hu, PIXEL_MM, dose=dose, i0=5e4, seed=3)
        sigma[dose] = measure_noise_sigma(source, flat)
        assert abs(float(source[flat].mean())) < 3.0, f"water mean moved at dose {dose}"
        assert abs(float(target[flat].mean())) < 3.0
    assert 1.7 <= sigma[0.25] / sigma[1.0] <= 2.3, sigma


def test_noise_alone_scales_with_dose_at_default_flux(cylinder):
    hu, flat = cylinder
    # The noise-free round trip (huge flux) is shared by both members; what is left is noise.
    _, round_trip = simulate_pair(hu, PIXEL_MM, dose=1.0, i0=1e15, seed=0)
    source, target = simulate_pair(hu, PIXEL_MM, dose=0.25, seed=0)
    noise_source = measure_noise_sigma(source - round_trip, flat)
    noise_target = measure_noise_sigma(target - round_trip, flat)
    assert 1.8 <= noise_source / noise_target <= 2.2
    assert noise_target > 0.5  # the target is noisy too, just less


def test_pair_members_share_the_round_trip(cylinder):
    hu, flat = cylinder
    source, target = simulate_pair(hu, PIXEL_MM, dose=0.25, seed=1)
    assert source.shape == target.shape == hu.shape
    assert source.dtype == target.dtype == np.float32
    assert abs(float(source[flat].mean() - target[flat].mean())) < 3.0
    assert measure_noise_sigma(source, flat) > measure_noise_sigma(target, flat)


def test_air_stays_air(cylinder):
    hu, _ = cylinder
    padded = hu.copy()
    padded[hu < -999] = -1024.0  # scanner padding below -1000 is air too
    source, target = simulate_pair(padded, PIXEL_MM, dose=0.25, seed=0)
    air = _far_air(hu.shape)
    for member in (source, target):
        assert abs(float(member[air].mean()) + 1000.0) < 5.0
        assert float(np.percentile(member[air], 1)) > -1100.0


def test_same_seed_same_pair_other_seed_other_pair(cylinder):
    hu, _ = cylinder
    first = simulate_pair(hu, PIXEL_MM, seed=7, workers=2)
    again = simulate_pair(hu, PIXEL_MM, seed=7, workers=1)  # slice seeds do not depend on workers
    other = simulate_pair(hu, PIXEL_MM, seed=8, workers=2)
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
    # different slices of the same volume get different noise
    assert not np.array_equal(first[0][0], first[0][1])


def test_one_slice_and_non_square_slices():
    hu, _ = water_cylinder((1, 48, 64), PIXEL_MM, radius_mm=50)
    source, target = simulate_pair(hu[0], (PIXEL_MM, PIXEL_MM), seed=0)
    assert source.shape == target.shape == (48, 64)
    # a body touching the image corner must survive the padding (no circle cut)
    corner = np.full((1, 40, 40), 0.0, dtype=np.float32)
    source, _ = simulate_pair(corner, (2.5, PIXEL_MM, PIXEL_MM), dose=1.0, i0=1e9, seed=0)
    assert abs(float(source[0, :3, :3].mean())) < 60.0


def test_bad_arguments_raise():
    hu = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(ValueError, match="dose"):
        simulate_pair(hu, 1.0, dose=0.0)
    with pytest.raises(ValueError, match="shape"):
        simulate_pair(np.zeros(16), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        simulate_pair(np.full((1, 16, 16), np.nan), 1.0)


def test_calibrated_i0_keeps_noise_across_matrices():
    sigmas = []
    for size, pixel in ((64, 5.4), (128, 2.7)):
        hu, flat = water_cylinder((1, size, size), pixel, radius_mm=150)
        _, target = simulate_pair(hu, pixel, dose=1.0, seed=0)
        sigmas.append(measure_noise_sigma(target, flat))
    assert calibrated_i0(scan_geometry((64, 64), 5.4)) < calibrated_i0(scan_geometry((128, 128), 2.7))
    assert 0.8 < sigmas[0] / sigmas[1] < 1.25, sigmas


def test_default_flux_gives_clinical_noise_in_the_phantom_liver():
    phantom = make_phantom(0, shape=(6, 128, 128))
    source, target = simulate_pair(phantom.hu, phantom.spacing, dose=0.25, seed=0)
    liver = flat_region(phantom)
    assert liver.sum() > 500
    assert 8.0 < measure_noise_sigma(target, liver) < 16.0
    assert 16.0 < measure_noise_sigma(source, liver) < 30.0


@pytest.fixture(scope="module")
def patient_slice():
    phantom = make_phantom(2, shape=(2, 128, 128))
    return phantom, noise_free_scan(phantom.hu, phantom.spacing)


def _low_band_rms(error, body):
    from scipy.ndimage import gaussian_filter

    return float(gaussian_filter(error, (0, 8, 8))[body].std())  # below ~1/20 of Nyquist: the latent's band


def test_one_reading_per_bin_is_the_default(patient_slice):
    phantom, _ = patient_slice
    i0 = calibrated_i0(scan_geometry((128, 128), phantom.spacing[1]))
    assert readings_per_bin(i0, None) == 1 and readings_per_bin(i0, i0 / 10) == 10 and readings_per_bin(i0, 2 * i0) == 1
    default = simulate_pair(phantom.hu, phantom.spacing, dose=0.25, seed=4)
    one_reading = simulate_pair(phantom.hu, phantom.spacing, dose=0.25, seed=4, reading_i0=i0)
    for a, b in zip(default, one_reading):
        np.testing.assert_array_equal(a, b)
    # one reading per bin is the plain counting model draw for draw, so datasets made before the
    # setting existed stay bit-identical
    from bundle.data.simulate import (
        ELECTRONIC_NOISE_VAR,
        _line_integrals,
        _noisy_line_integrals,
    )

    p = _line_integrals(phantom.hu[0], scan_geometry((128, 128), phantom.spacing[1]))
    rng = np.random.default_rng(7)
    counts = rng.poisson(5e4 * np.exp(-p)).astype(np.float64)
    counts = np.maximum(counts + rng.normal(0.0, np.sqrt(ELECTRONIC_NOISE_VAR), size=counts.shape), 1.0)
    np.testing.assert_array_equal(_noisy_line_integrals(p, 5e4, np.random.default_rng(7)), -np.log(counts / 5e4))
    with pytest.raises(ValueError, match="photons per reading"):
        simulate_pair(phantom.hu, phantom.spacing, reading_i0=0.0)


def test_photon_starvation_adds_low_frequency_error_at_low_dose_only(patient_slice):
    phantom, clean = patient_slice
    body = clean > -500
    starved = simulate_pair(phantom.hu, phantom.spacing, dose=0.05, seed=0, reading_i0=3e4)
    plain = simulate_pair(phantom.hu, phantom.spacing, dose=0.05, seed=0)
    # at 5 % the readings behind the body's long paths near the electronic noise: streaks and a
    # level shift, low-frequency error the plain model (0.5 HU) does not have
    assert _low_band_rms(starved[0] - clean, body) > 4 * _low_band_rms(plain[0] - clean, body) + 1.0
    # the full-dose member's bins are well lit: split into readings they keep their noise
    sigma = [float((pair[1] - clean)[body].std()) for pair in (starved, plain)]
    assert abs(sigma[0] / sigma[1] - 1) < 0.1, sigma
    assert _low_band_rms(starved[1] - clean, body) < 1.0


def test_measure_noise_sigma_pools_regions_with_their_own_means():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 40, 40))
    image[:, :, 20:] = 100.0  # two flat tissues
    image += rng.normal(0, 10, image.shape)
    mask = np.ones(image.shape, bool)
    mask[:, :, 18:22] = False  # the edge between them
    assert abs(measure_noise_sigma(image, mask) - 10.0) < 0.6
    assert np.isnan(measure_noise_sigma(image, np.zeros_like(mask)))


def test_find_flat_region_stays_inside_tissues():
    phantom = make_phantom(1, shape=(4, 96, 96), spacing=(2.5, 3.6, 3.6))
    flat = find_flat_region(phantom.hu)
    assert flat.sum() > 300
    assert measure_noise_sigma(phantom.hu, flat) < 4.0  # no edges inside, only texture
    values = phantom.hu[flat]
    assert values.min() >= -150 and values.max() <= 200


# ---------------------------------------------------------------- the ``ctv2v simulate`` command


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("simulate_in")
    spacing = (2.5, 5.4, 5.4)
    affine = np.diag([-5.4, -5.4, 2.5, 1.0])
    affine[:3, 3] = (100.0, 90.0, -20.0)
    for index, name in enumerate(("alpha.nii.gz", "nested/beta.nii")):
        phantom = make_phantom(index, shape=(3, 64, 64), spacing=spacing)
        save_nifti(phantom.hu, root / name, affine)
    (root / "broken.nii.gz").write_bytes(b"not a nifti file")
    (root / "notes.txt").write_text("not an input")
    from bundle.dicom import write_ct_series

    phantom = make_phantom(5, shape=(3, 64, 64), spacing=spacing)
    write_ct_series(
        phantom.hu, root / "series", spacing=spacing, origin=(-170.0, -170.0, 0.0),
        direction=np.eye(3), series_description="test", uid_seed="simulate-cli",
    )
    return root


def test_cli_simulates_every_good_input_and_reports_the_bad_one(cli_inputs, tmp_path, capsys):
    from bundle.cli import main

    before = _digest(cli_inputs)
    out = tmp_path / "out"
    code = main(["simulate", str(cli_inputs), str(out), "--dose", "0.25", "--seed", "0"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.nii.gz" in captured.err and "FAILED" in captured.err
    assert _digest(cli_inputs) == before, "inputs must never change"

    names = ("alpha", "nested_beta", "series")
    for name in names:
        assert f"{name}:" in captured.out and "s/slice" in captured.out
        source = load_ct(out / f"{name}_source.nii.gz")
        target = load_ct(out / f"{name}_target.nii.gz")
        np.testing.assert_array_equal(source.affine_ras, target.affine_ras)
        assert source.hu.shape == target.hu.shape == (3, 64, 64)
        original = load_ct(cli_inputs / "series") if name == "series" else None
        if original is not None:
            np.testing.assert_allclose(source.affine_ras, original.affine_ras, atol=1e-4)
    alpha = load_ct(cli_inputs / "alpha.nii.gz")
    np.testing.assert_allclose(load_ct(out / "alpha_source.nii.gz").affine_ras, alpha.affine_ras, atol=1e-5)

    datalist = json.loads((out / "datalist.json").read_text())
    assert set(datalist) == {"training", "validation", "test"}
    assert [e["patient"] for e in datalist["test"]] == list(names)
    for entry in datalist["test"]:
        for key in ("source", "target"):
            assert (out / entry[key]).is_file()


def test_cli_is_reproducible_and_seeds_each_volume(cli_inputs, tmp_path):
    from bundle.cli import main

    runs = []
    for run in ("a", "b"):
        main(["simulate", str(cli_inputs / "alpha.nii.gz"), str(tmp_path / run), "--split", "training"])
        runs.append(load_ct(tmp_path / run / "alpha_source.nii.gz").hu)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert json.loads((tmp_path / "a" / "datalist.json").read_text())["training"][0]["patient"] == "alpha"


def test_cli_exit_code_for_missing_input(tmp_path):
    from bundle.cli import main

    assert main(["simulate", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 1


def test_cli_rejects_a_non_positive_reading_flux(cli_inputs, tmp_path, capsys):
    from bundle.cli import main

    assert main(["simulate", str(cli_inputs), str(tmp_path / "out"), "--reading-i0", "0"]) == 2
    assert "--reading-i0 must be positive" in capsys.readouterr().err
