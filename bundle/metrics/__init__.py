"""Measures of CT image quality in HU, shared by training's validation, the evaluation and the
low-dose simulator (a bottom layer: it imports nothing else of the bundle).

- :mod:`bundle.metrics.image_quality`: PSNR / SSIM / RMSE per axial slice in HU windows;
- :mod:`bundle.metrics.noise`: flat regions and the noise standard deviation in them.
"""

from bundle.metrics.image_quality import (
    METRIC_WINDOWS,
    PSNR_CAP,
    TISSUE_HU,
    mean_metrics,
    psnr,
    volume_metrics,
    window_metrics,
    window_name,
)
from bundle.metrics.noise import estimate_noise_sigma, find_flat_region, flat_region_mask, measure_noise_sigma, noise_sigma

__all__ = [
    "METRIC_WINDOWS",
    "PSNR_CAP",
    "TISSUE_HU",
    "estimate_noise_sigma",
    "find_flat_region",
    "flat_region_mask",
    "mean_metrics",
    "measure_noise_sigma",
    "noise_sigma",
    "psnr",
    "volume_metrics",
    "window_metrics",
    "window_name",
]
