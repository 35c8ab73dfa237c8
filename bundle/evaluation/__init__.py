"""Image-quality evaluation in HU windows, as the low-dose CT literature reports it.

``metrics``: per-slice PSNR/SSIM/RMSE, volume PSNR and noise sigma; ``methods``, ``baselines``,
``redcnn``: the rows compared; ``evaluate``: the run; ``report``: its files.
"""

from bundle.evaluation.metrics import (
    DEFAULT_WINDOWS,
    PSNR_CAP,
    flat_region_mask,
    mean_metrics,
    noise_sigma,
    volume_metrics,
    window_name,
)

__all__ = ["DEFAULT_WINDOWS", "PSNR_CAP", "flat_region_mask", "mean_metrics", "noise_sigma", "volume_metrics", "window_name"]
