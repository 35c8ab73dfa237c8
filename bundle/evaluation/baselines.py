"""Classical denoisers: the baselines that need no training, tuned on the validation split.

- :class:`GaussianFilter`: a 3D Gaussian (in-plane sigma and slice sigma in voxels), both picked
  on the validation pairs from a grid by the tuning window's per-slice PSNR.
- :class:`NonLocalMeans`: scikit-image's ``denoise_nl_means`` per axial slice (fast mode), with
  the filter strength ``h = h_factor * sigma`` where sigma is the slice's estimated noise; the
  factor is tuned on the validation pairs. About 0.4 s for a 32 x 128 x 128 volume on one CPU
  core with the default 5 x 5 patches searched within 6 pixels.
- :class:`BM3DFilter`: the ``bm3d`` package (Tampere University, on PyPI, binary wheels) per axial
  slice, when it is installed; otherwise its row says so. Not a project dependency: about 0.4 s
  per 128 x 128 slice, minutes per real scan. ``pip install bm3d`` to enable it.

All work in HU on the volume's own grid and return float32 HU ``(1, S, H, W)``. Tuning scores one
setting per call of ``volume_metrics`` on every validation pair; with no validation pairs the
defaults stay.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from bundle.evaluation.methods import Method, Pair
from bundle.metrics import estimate_noise_sigma, volume_metrics, window_name
from bundle.inference.enhancer import Enhancement

__all__ = ["BM3DFilter", "GaussianFilter", "NonLocalMeans"]

SOFT_TISSUE = (-160.0, 240.0)

def _as_volume(source_hu: torch.Tensor) -> np.ndarray:
    """(1, S, H, W) tensor -> (S, H, W) float64 array."""
    return source_hu.detach().cpu().double().numpy().reshape(source_hu.shape[-3:])


def _as_output(volume: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).reshape(like.shape)


class TunedFilter(Method):
    """A filter with a grid of candidate settings, the best one picked on validation pairs.

    Subclasses define ``candidates()`` (dicts of settings) and ``apply(volume, **setting)``.
    """

    tune_window = SOFT_TISSUE

    def __init__(self) -> None:
        self.chosen: dict[str, Any] = {}
        self.scores: list[dict[str, Any]] = []

    def candidates(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def apply(self, volume: np.ndarray, **setting) -> np.ndarray:
        raise NotImplementedError

    def prepare(self, validation: list[Pair]) -> dict[str, Any]:
        if not validation:
            return {"tuned": False, "chosen": dict(self.chosen), "why": "no validation pairs"}
        self.scores = []
        best = None
        for setting in self.candidates():
            psnrs = [
                volume_metrics(self._run(pair.source, setting), pair.target, self.tune_window)["psnr"]
                for pair in validation
            ]
            score = sum(psnrs) / len(psnrs)
            self.scores.append({**setting, "psnr": score})
            if best is None or score > best[0]:
                best = (score, setting)
        self.chosen = dict(best[1])
        return {
            "tuned": True,
            "chosen": dict(self.chosen),
            "criterion": f"mean per-slice PSNR in {window_name(self.tune_window)} on {len(validation)} validation pair(s)",
            "best_psnr": best[0],
            "grid": self.scores,
        }

    def _run(self, source_hu: torch.Tensor, setting: dict[str, Any]) -> torch.Tensor:
        return _as_output(self.apply(_as_volume(source_hu), **setting), source_hu)

    def settings(self) -> dict[str, Any]:
        return dict(self.chosen)

    def enhance(self, source_hu, target_hu=None) -> Enhancement:
        return Enhancement(hu=self._run(source_hu, self.chosen))


class GaussianFilter(TunedFilter):
    """3D Gaussian smoothing, sigmas in voxels ``(slice, in-plane, in-plane)``.

    Args:
        sigmas: in-plane sigmas to try (voxels).
        slice_sigmas: sigmas along the slice axis to try (0: each slice alone).
        sigma, slice_sigma: the setting used when there is nothing to tune on.
    """

    name = "gaussian"

    def __init__(
        self,
        sigmas=(0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0),
        slice_sigmas=(0.0, 0.5, 1.0),
        sigma: float = 1.0,
        slice_sigma: float = 0.0,
    ) -> None:
        super().__init__()
        self.sigmas = [float(s) for s in sigmas]
        self.slice_sigmas = [float(s) for s in slice_sigmas]
        self.chosen = {"sigma": float(sigma), "slice_sigma": float(slice_sigma)}

    def candidates(self):
        return [{"sigma": s, "slice_sigma": z} for s, z in itertools.product(self.sigmas, self.slice_sigmas)]

    def apply(self, volume, sigma: float, slice_sigma: float) -> np.ndarray:
        return ndimage.gaussian_filter(volume, sigma=(slice_sigma, sigma, sigma), mode="nearest")


class NonLocalMeans(TunedFilter):
    """2D non-local means per axial slice (scikit-image), ``h = h_factor * sigma`` per slice.

    Args:
        h_factors: factors to try on validation.
        h_factor: the setting used when there is nothing to tune on.
        patch_size, patch_distance: patch side and search radius in pixels.
        fast_mode: scikit-image's fast (box-kernel) variant; the other is about 9 x slower.
    """

    name = "nlm"
    per_slice = True

    def __init__(
        self,
        h_factors=(0.6, 0.9, 1.2, 1.5, 2.0, 2.5),
        h_factor: float = 1.2,
        patch_size: int = 5,
        patch_distance: int = 6,
        fast_mode: bool = True,
    ) -> None:
        super().__init__()
        self.h_factors = [float(f) for f in h_factors]
        self.patch_size = int(patch_size)
        self.patch_distance = int(patch_distance)
        self.fast_mode = bool(fast_mode)
        self.chosen = {"h_factor": float(h_factor)}

    def candidates(self):
        return [{"h_factor": f} for f in self.h_factors]

    def settings(self):
        return {**self.chosen, "patch_size": self.patch_size, "patch_distance": self.patch_distance, "fast_mode": self.fast_mode}

    def apply(self, volume, h_factor: float) -> np.ndarray:
        from skimage.restoration import denoise_nl_means

        out = np.empty_like(volume)
        for index, slice_hu in enumerate(volume):
            sigma = estimate_noise_sigma(slice_hu)
            if sigma <= 0:  # no soft tissue (air slice): nothing to estimate, nothing to denoise
                out[index] = slice_hu
                continue
            out[index] = denoise_nl_means(
                slice_hu, patch_size=self.patch_size, patch_distance=self.patch_distance,
                h=h_factor * sigma, sigma=sigma, fast_mode=self.fast_mode, preserve_range=True,
            )
        return out


class BM3DFilter(TunedFilter):
    """BM3D per axial slice via the ``bm3d`` package (an evaluation extra: ``pip install -e
    ".[eval]"``), noise std from :func:`estimate_noise_sigma` times ``sigma_factor``, the factor
    tuned on the validation pairs like NLM's (about 0.8 s per 128 x 128 slice: four candidates
    cost a few minutes on the demo). The slice is scaled to [0, 1] over the full CT range for the
    package.
    """

    name = "bm3d"
    per_slice = True
    RANGE = (-1024.0, 3072.0)

    def __init__(self, sigma_factors=(0.5, 0.75, 1.0, 1.5), sigma_factor: float = 1.0) -> None:
        super().__init__()
        self.sigma_factors = [float(f) for f in sigma_factors]
        self.chosen = {"sigma_factor": float(sigma_factor)}

    @property
    def status(self) -> str | None:
        if importlib.util.find_spec("bm3d") is None:
            return 'not installed (optional: pip install -e ".[eval]")'
        return None

    def candidates(self):
        return [{"sigma_factor": f} for f in self.sigma_factors]

    def apply(self, volume, sigma_factor: float) -> np.ndarray:
        import bm3d

        lo, hi = self.RANGE
        out = np.empty_like(volume)
        for index, slice_hu in enumerate(volume):
            sigma = estimate_noise_sigma(slice_hu) * sigma_factor
            if sigma <= 0 or not math.isfinite(sigma):
                out[index] = slice_hu
                continue
            scaled = (np.clip(slice_hu, lo, hi) - lo) / (hi - lo)
            out[index] = lo + (hi - lo) * np.asarray(bm3d.bm3d(scaled, sigma_psd=sigma / (hi - lo)))
        return out
