"""PSNR, SSIM and RMSE of CT volumes in HU windows, per 2D axial slice (the field's protocol).

- Both volumes are clipped to the window ``[lo, hi]``; PSNR uses the window width as the data
  range; RMSE is in HU of the clipped values; SSIM is 2D (Gaussian window 11, sigma 1.5, the
  usual constants) on the window scaled to [0, 1].
- Slices that are almost all air (tissue fraction of the target, HU > -500, below
  ``min_tissue_fraction``) are left out: inside a narrow window they have near-zero error and an
  unbounded PSNR that swamps the mean (docs/evaluation.md). ``volume_psnr`` is one PSNR
  of the squared error pooled over the same slices, so no single near-perfect slice can dominate it.
- A perfect slice has infinite PSNR; it is capped at ``PSNR_CAP`` dB so means stay finite.
- Noise sigma (HU) in flat regions (:mod:`bundle.metrics.noise`): one mask per volume, found in
  the TARGET and shared by all methods, so their sigmas compare.
- :func:`window_metrics` scores one volume in every window: the one protocol of training's
  validation and of the evaluation. Both score the scan's own voxels (nothing padded).
"""

from __future__ import annotations

import math

import torch
from monai.metrics import SSIMMetric

from bundle.metrics.noise import noise_sigma

__all__ = ["METRIC_WINDOWS", "PSNR_CAP", "TISSUE_HU", "mean_metrics", "psnr", "volume_metrics", "window_metrics",
           "window_name"]

# full range, a wide window (lung to bone), soft tissue: the last one is the key window
METRIC_WINDOWS = ((-1024.0, 3072.0), (-1000.0, 1000.0), (-160.0, 240.0))
PSNR_CAP = 100.0
TISSUE_HU = -500.0


def window_name(window) -> str:
    """``[-160,240]``: the key used for a window in reports and JSON."""
    lo, hi = window
    return f"[{lo:g},{hi:g}]"


def _as_slices(volume: torch.Tensor) -> torch.Tensor:
    """Any (…, S, H, W) HU volume -> (S, 1, H, W) float64 slices."""
    v = torch.as_tensor(volume).detach().double()
    return v.reshape(-1, 1, v.shape[-2], v.shape[-1])


def psnr(mse: torch.Tensor, data_range: float) -> torch.Tensor:
    value = 10 * torch.log10(data_range**2 / mse.clamp_min(1e-300))
    return value.clamp(max=PSNR_CAP)


def volume_metrics(
    pred_hu, target_hu, window, min_tissue_fraction: float = 0.05, flat_mask=None
) -> dict[str, float]:
    """Per-slice mean PSNR/SSIM/RMSE in ``window`` over tissue slices, and one pooled volume PSNR.

    Args:
        pred_hu, target_hu: HU volumes of one shape, ``(..., S, H, W)``.
        window: ``(lo, hi)`` in HU.
        min_tissue_fraction: slices whose target has less tissue (HU > -500) are left out.
        flat_mask: optional boolean ``(S, H, W)`` mask of flat regions (:func:`flat_region_mask`);
            adds ``noise_sigma``, the prediction's noise there, in HU, after clipping to the window.

    Returns ``psnr``, ``ssim``, ``rmse`` (slice means), ``volume_psnr``, ``slices`` (used),
    ``slices_excluded`` (and ``noise_sigma`` when ``flat_mask`` is given).
    """
    lo, hi = float(window[0]), float(window[1])
    pred = _as_slices(pred_hu)
    target = _as_slices(target_hu)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
    tissue = (target > TISSUE_HU).double().mean(dim=(1, 2, 3))
    keep = tissue >= min_tissue_fraction
    if not bool(keep.any()):
        keep = torch.ones_like(keep)  # no tissue anywhere: report all rather than nothing
    p = pred.clamp(lo, hi)
    t = target.clamp(lo, hi)
    width = hi - lo
    mse = ((p - t) ** 2).mean(dim=(1, 2, 3))
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=min(11, *_odd_sizes(p)))(
        ((p - lo) / width).float(), ((t - lo) / width).float()
    ).double().flatten()
    volume_mse = ((p[keep] - t[keep]) ** 2).mean()
    result = {
        "psnr": float(psnr(mse[keep], width).mean()),
        "ssim": float(ssim[keep].mean()),
        "rmse": float(mse[keep].sqrt().mean()),
        "volume_psnr": float(psnr(volume_mse, width)),
        "slices": int(keep.sum()),
        "slices_excluded": int((~keep).sum()),
    }
    if flat_mask is not None:
        result["noise_sigma"] = noise_sigma(p, flat_mask)
    return result


def window_metrics(
    pred_hu, target_hu, windows=METRIC_WINDOWS, min_tissue_fraction: float = 0.05, flat_mask=None
) -> dict[str, dict[str, float]]:
    """One volume's :func:`volume_metrics` in every window: ``{window_name: {metric: value}}``."""
    return {
        window_name(w): volume_metrics(pred_hu, target_hu, w, min_tissue_fraction, flat_mask=flat_mask)
        for w in windows
    }


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over volumes (each volume counts once); NaNs (no flat region) are
    left out of ``noise_sigma``'s mean; counts (``slices``...) are summed."""
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        values = [float(row[key]) for row in rows]
        if key.startswith("slices"):
            out[key] = int(sum(values))
            continue
        finite = [v for v in values if not math.isnan(v)]
        out[key] = sum(finite) / len(finite) if finite else float("nan")
    return out


def _odd_sizes(slices: torch.Tensor) -> tuple[int, int]:
    """Largest odd window sizes that fit the slice (small test images)."""
    h, w = slices.shape[-2:]
    return (h if h % 2 else h - 1), (w if w % 2 else w - 1)
