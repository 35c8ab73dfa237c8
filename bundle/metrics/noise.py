"""Noise in HU: where to measure it (flat regions) and how much there is.

- :func:`find_flat_region` finds soft tissue whose neighbourhood is flat in a (clean or
  full-dose) volume; :func:`measure_noise_sigma` pools the standard deviation of any volume over
  such a mask, per 2D region around its own mean. The low-dose simulator calibrates with them;
  the evaluation measures every method's output with them.
- :func:`flat_region_mask` and :func:`noise_sigma` are the same on ``(..., S, H, W)`` tensors.
- :func:`estimate_noise_sigma` estimates a slice's noise without a mask (Immerkaer 1996), for
  filters that set their strength from it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

__all__ = ["estimate_noise_sigma", "find_flat_region", "flat_region_mask", "measure_noise_sigma", "noise_sigma"]


def _as_slices(volume) -> np.ndarray:
    """Any (..., S, H, W) HU volume -> (S, H, W) float64 array."""
    v = torch.as_tensor(volume).detach().double().cpu()
    return v.reshape(-1, v.shape[-2], v.shape[-1]).numpy()


def _in_slice_structure(ndim: int) -> np.ndarray | None:
    """Labelling structure that connects voxels within a slice only (4-connectivity)."""
    if ndim == 2:
        return None
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    return structure


def measure_noise_sigma(hu: np.ndarray, mask: np.ndarray, min_voxels: int = 16) -> float:
    """Noise standard deviation (HU) inside ``mask``, pooled over its flat regions.

    Each 2D connected component of ``mask`` (per slice) is taken as one flat region with its own
    mean, so a mask spanning, say, liver and muscle does not count their HU difference as noise.
    Components under ``min_voxels`` are ignored. Returns NaN when nothing is left.
    """
    values = np.asarray(hu, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if values.shape != mask.shape:
        raise ValueError(f"image {values.shape} and mask {mask.shape} differ in shape")
    labels, count = ndimage.label(mask, structure=_in_slice_structure(mask.ndim))
    if count == 0:
        return float("nan")
    index = labels[mask]
    data = values[mask]
    n = np.bincount(index, minlength=count + 1)[1:].astype(np.float64)
    total = np.bincount(index, weights=data, minlength=count + 1)[1:]
    # Deviations from each component's mean, summed; computed directly (not sum(x^2) - n mean^2)
    # so large HU offsets do not cost precision.
    means = np.zeros(count + 1)
    means[1:] = total / np.maximum(n, 1)
    squares = np.bincount(index, weights=(data - means[index]) ** 2, minlength=count + 1)[1:]
    keep = n >= min_voxels
    dof = float((n[keep] - 1).sum())
    if dof <= 0:
        return float("nan")
    return float(math.sqrt(squares[keep].sum() / dof))


def find_flat_region(
    hu: np.ndarray,
    window: int = 7,
    hu_range: tuple[float, float] = (-150.0, 200.0),
    max_local_std: float | None = None,
) -> np.ndarray:
    """Mask of soft-tissue voxels whose in-plane neighbourhood is flat; look in a clean volume.

    A voxel is kept when its HU and the mean HU of its ``window x window`` in-plane neighbourhood
    lie in ``hu_range`` and the neighbourhood's standard deviation is at most ``max_local_std``
    (default: 1.25 x the 5th percentile of the soft-tissue voxels' local std, but at least 3 HU,
    so an exactly flat phantom and a real, already noisy scan both yield a region). Edges within
    half a window are excluded, so every 2D component lies inside one tissue.

    Args:
        hu: HU, (slices, rows, cols) or (rows, cols); typically the normal-dose input.
    """
    values = np.asarray(hu, dtype=np.float64)
    size = (window, window) if values.ndim == 2 else (1, window, window)
    local_mean = ndimage.uniform_filter(values, size=size, mode="nearest")
    local_sq = ndimage.uniform_filter(values**2, size=size, mode="nearest")
    local_std = np.sqrt(np.maximum(local_sq - local_mean**2, 0.0))
    low, high = hu_range
    candidate = (values >= low) & (values <= high) & (local_mean >= low) & (local_mean <= high)
    if not candidate.any():
        return candidate
    if max_local_std is None:
        max_local_std = max(3.0, 1.25 * float(np.quantile(local_std[candidate], 0.05)))
    return candidate & (local_std <= max_local_std)


def flat_region_mask(target_hu) -> np.ndarray:
    """Boolean ``(S, H, W)`` mask of flat soft tissue in the target (see the module docstring).

    Voxels in [-150, 200] HU whose 7 x 7 in-plane neighbourhood has a local standard deviation
    near the volume's smallest (:func:`find_flat_region`): the regions where
    any remaining variation is noise rather than anatomy.
    """
    target = _as_slices(target_hu)
    return find_flat_region(target)


def noise_sigma(pred_hu, flat_mask) -> float:
    """Standard deviation (HU) of ``pred_hu`` inside ``flat_mask``, each 2D region around its own
    mean (regions under 16 voxels ignored); NaN when the mask is empty."""
    pred = _as_slices(pred_hu)
    mask = np.asarray(flat_mask, dtype=bool).reshape(pred.shape)
    return measure_noise_sigma(pred, mask)


# Second-difference kernel whose response to white noise of std s has std 6 s (its L2 norm is 6)
# and to any linear ramp is 0 (Immerkaer 1996, "Fast noise variance estimation").
_LAPLACE = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def estimate_noise_sigma(slice_hu: np.ndarray, hu_range=(-150.0, 200.0)) -> float:
    """Noise std (HU) of one 2D slice: median absolute second difference over soft tissue.

    Only voxels whose 3 x 3 neighbourhood lies in ``hu_range`` count (edges of bone and air
    would dominate otherwise); the median of |response| / 0.6745 is the std of a Gaussian, and
    the kernel multiplies a white-noise std by 6. 0 when no such voxel exists.
    """
    values = np.asarray(slice_hu, dtype=np.float64)
    low, high = hu_range
    inside = (values >= low) & (values <= high)
    inside = ndimage.binary_erosion(inside, structure=np.ones((3, 3)))
    if inside.sum() < 16:
        return 0.0
    response = ndimage.convolve(values, _LAPLACE, mode="nearest")
    return float(np.median(np.abs(response[inside])) / 0.6745 / 6.0)
