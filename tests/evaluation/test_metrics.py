"""HU-window metrics against independent numpy / scikit-image computations on synthetic volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from bundle.metrics import (
    METRIC_WINDOWS,
    PSNR_CAP,
    flat_region_mask,
    mean_metrics,
    noise_sigma,
    volume_metrics,
    window_name,
)




def synthetic_pair(seed: int = 0, slices: int = 6, size: int = 40):
    """A body (ellipse of soft tissue with a bone disc and a lung-like hole) in air, and a noisy
    copy; the first slice is all air (left out of the per-slice means)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    body = (xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1
    target = np.full((slices, size, size), -1000.0)
    for s in range(1, slices):
        image = np.where(body, 40.0 + 20 * s, -1000.0)
        image[(xx - 0.15) ** 2 + yy**2 < 0.01] = 900.0   # bone
        image[(xx + 0.2) ** 2 + yy**2 < 0.008] = -850.0  # lung
        target[s] = image
    pred = target + rng.normal(0, 30, target.shape)
    pred[2, :4, :4] = 5000.0  # outside every window: clipping must matter
    return pred, target


def numpy_metrics(pred, target, window, min_tissue_fraction=0.05):
    """The documented protocol, written out in numpy."""
    lo, hi = window
    p, t = np.clip(pred, lo, hi), np.clip(target, lo, hi)
    keep = [(target[s] > -500).mean() >= min_tissue_fraction for s in range(len(target))]
    width = hi - lo
    psnrs, rmses, ssims = [], [], []
    for s in np.flatnonzero(keep):
        mse = np.mean((p[s] - t[s]) ** 2)
        psnrs.append(min(PSNR_CAP, 10 * math.log10(width**2 / mse)) if mse > 0 else PSNR_CAP)
        rmses.append(math.sqrt(mse))
        ssims.append(
            structural_similarity(
                (p[s] - lo) / width, (t[s] - lo) / width, data_range=1.0, gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False, K1=0.01, K2=0.03,
            )
        )
    pooled = np.mean((p[keep] - t[keep]) ** 2)
    return {
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "rmse": float(np.mean(rmses)),
        "volume_psnr": 10 * math.log10(width**2 / pooled),
        "slices": int(np.sum(keep)),
        "slices_excluded": int(len(keep) - np.sum(keep)),
    }


@pytest.mark.parametrize("window", METRIC_WINDOWS, ids=window_name)
def test_metrics_match_numpy_and_skimage(window):
    pred, target = synthetic_pair()
    ours = volume_metrics(torch.from_numpy(pred)[None], torch.from_numpy(target)[None], window)
    ref = numpy_metrics(pred, target, window)
    assert ours["slices"] == ref["slices"] == 5 and ours["slices_excluded"] == ref["slices_excluded"] == 1
    for key in ("psnr", "rmse", "volume_psnr"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), key
    # MONAI's SSIM runs in float32 with a valid-region Gaussian filter; skimage in float64 with
    # a cropped reflect-padded one: the same numbers to float32 precision
    assert ours["ssim"] == pytest.approx(ref["ssim"], abs=2e-5)


def test_exact_prediction_scores_the_cap_and_ssim_one():
    _, target = synthetic_pair()
    volume = torch.from_numpy(target)
    for window in METRIC_WINDOWS:
        m = volume_metrics(volume, volume.clone(), window)
        assert m["psnr"] == PSNR_CAP and m["volume_psnr"] == PSNR_CAP
        assert m["rmse"] == 0.0
        assert m["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_window_names():
    assert window_name((-160, 240)) == "[-160,240]"
    assert window_name((-1024.0, 3072.0)) == "[-1024,3072]"
    assert [window_name(w) for w in METRIC_WINDOWS] == ["[-1024,3072]", "[-1000,1000]", "[-160,240]"]


def test_all_air_volume_is_scored_rather_than_empty():
    air = torch.full((1, 3, 16, 16), -1000.0)
    m = volume_metrics(air + 1.0, air, (-1000, 1000))
    assert m["slices"] == 3 and m["slices_excluded"] == 0
    assert m["rmse"] == pytest.approx(1.0)


def test_noise_sigma_in_flat_regions():
    rng = np.random.default_rng(1)
    target = np.full((4, 48, 48), -1000.0)
    target[:, 8:40, 8:24] = 40.0  # two flat organs at different HU
    target[:, 8:40, 24:40] = 90.0
    mask = flat_region_mask(torch.from_numpy(target))
    assert mask.shape == target.shape and mask.sum() > 500
    assert not mask[:, :8].any()  # not in air
    noisy = target + rng.normal(0, 15.0, target.shape)
    # each region around its own mean: the 50 HU step between the organs is not noise
    assert noise_sigma(torch.from_numpy(noisy), mask) == pytest.approx(15.0, rel=0.05)
    assert noise_sigma(torch.from_numpy(target), mask) == pytest.approx(0.0, abs=1e-9)
    m = volume_metrics(torch.from_numpy(noisy), torch.from_numpy(target), (-160, 240), flat_mask=mask)
    assert m["noise_sigma"] == pytest.approx(noise_sigma(torch.from_numpy(noisy), mask))


def test_mean_metrics_over_volumes():
    rows = [
        {"psnr": 30.0, "noise_sigma": float("nan"), "slices": 4, "slices_excluded": 1},
        {"psnr": 34.0, "noise_sigma": 10.0, "slices": 6, "slices_excluded": 0},
    ]
    assert mean_metrics(rows) == {"psnr": 32.0, "noise_sigma": 10.0, "slices": 10, "slices_excluded": 1}
