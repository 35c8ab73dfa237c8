"""Image-quality metrics in HU windows, as the low-dose CT literature reports them."""

from bundle.evaluation.metrics import DEFAULT_WINDOWS, volume_metrics, window_name

__all__ = ["DEFAULT_WINDOWS", "volume_metrics", "window_name"]
