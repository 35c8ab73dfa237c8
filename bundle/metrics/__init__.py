"""Measures of CT image quality in HU, shared by training's validation, the evaluation and the
low-dose simulator (a bottom layer: it imports nothing else of the bundle).

- :mod:`bundle.metrics.image_quality`: PSNR / SSIM / RMSE per axial slice in HU windows;
- :mod:`bundle.metrics.noise`: flat regions and the noise standard deviation in them;
- :mod:`bundle.metrics.nps`: the noise power spectrum (noise texture);
- :mod:`bundle.metrics.resolution`: the task transfer function from an insert's edge;
- :mod:`bundle.metrics.detectability`: CNR and the non-prewhitening and prewhitening (ideal) observers' d';
- :mod:`bundle.metrics.hu_accuracy`: bias and RMSE per tissue class.
"""

from bundle.metrics.detectability import cnr, disc_spectrum, npw_detectability, pw_detectability
from bundle.metrics.hu_accuracy import HU_CLASSES, class_masks, hu_accuracy
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
from bundle.metrics.nps import NoisePowerSpectrum, noise_power_spectrum, square_rois
from bundle.metrics.resolution import TaskTransferFunction, task_transfer_function

__all__ = [
    "HU_CLASSES",
    "METRIC_WINDOWS",
    "NoisePowerSpectrum",
    "TaskTransferFunction",
    "class_masks",
    "cnr",
    "disc_spectrum",
    "hu_accuracy",
    "noise_power_spectrum",
    "npw_detectability",
    "pw_detectability",
    "square_rois",
    "task_transfer_function",
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
