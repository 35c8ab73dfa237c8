"""PSNR, SSIM and RMSE of CT volumes in HU windows, per 2D axial slice (the field's protocol).

- Both volumes are clipped to the window ``[lo, hi]``; PSNR uses the window width as the data
  range; RMSE is in HU of the clipped values; SSIM is 2D (Gaussian window 11, sigma 1.5, the
  usual constants) on the window scaled to [0, 1].
- Slices that are almost all air (tissue fraction of the target, HU > -500, below
  ``min_tissue_fraction``) are left out: inside a narrow window they have near-zero error and an
  unbounded PSNR that swamps the mean (see ../shared/notes/ldct.md). ``volume_psnr`` is computed
  over the whole volume too, which needs no exclusion.
- A perfect slice has infinite PSNR; it is capped at ``PSNR_CAP`` dB so means stay finite.
"""

from __future__ import annotations

import torch
from monai.metrics import SSIMMetric

DEFAULT_WINDOWS = ((-1024.0, 3072.0), (-1000.0, 1000.0), (-160.0, 240.0))
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


def volume_metrics(pred_hu, target_hu, window, min_tissue_fraction: float = 0.05) -> dict[str, float]:
    """Per-slice mean PSNR/SSIM/RMSE in ``window`` over tissue slices, and whole-volume PSNR.

    Returns ``psnr``, ``ssim``, ``rmse`` (slice means), ``volume_psnr``, ``slices`` (used),
    ``slices_excluded``.
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
    return {
        "psnr": float(psnr(mse[keep], width).mean()),
        "ssim": float(ssim[keep].mean()),
        "rmse": float(mse[keep].sqrt().mean()),
        "volume_psnr": float(psnr(volume_mse, width)),
        "slices": int(keep.sum()),
        "slices_excluded": int((~keep).sum()),
    }


def _odd_sizes(slices: torch.Tensor) -> tuple[int, int]:
    """Largest odd window sizes that fit the slice (small test images)."""
    h, w = slices.shape[-2:]
    return (h if h % 2 else h - 1), (w if w % 2 else w - 1)
