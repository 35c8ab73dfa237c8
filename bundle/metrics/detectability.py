"""Low-contrast detectability: CNR and the non-prewhitening observer's d' (FDA / AAPM TG-233).

- CNR: ``|mean(lesion) - mean(background)| / sigma(background)``, measured on the image.
- d'_NPW: the detectability of a known disc (contrast ``C`` HU, radius ``R`` mm) by an observer
  that correlates the image with the expected signal, from the system's TTF and NPS:

      d'^2 = ( sum |W|^2 TTF^2 )^2 / sum |W|^2 TTF^2 NPS        (sums over the 2D frequency grid,
                                                                 times the frequency cell)

  with ``W(f) = C * pi R^2 * 2 J1(2 pi R f) / (2 pi R f)`` the disc's Fourier transform. It grows
  with contrast and size, falls with noise, and, unlike CNR, weighs noise by where its power lies:
  a denoiser that only removes high-frequency noise helps a small disc more than a large one.
"""

from __future__ import annotations

import numpy as np
from scipy.special import j1

from bundle.metrics.nps import NoisePowerSpectrum

__all__ = ["cnr", "disc_spectrum", "npw_detectability"]


def cnr(image: np.ndarray, lesion: np.ndarray, background: np.ndarray) -> float:
    """Contrast-to-noise ratio of the ``lesion`` mask against the ``background`` mask."""
    image = np.asarray(image, dtype=np.float64)
    inside, around = image[np.asarray(lesion, bool)], image[np.asarray(background, bool)]
    if inside.size == 0 or around.size < 2:
        return float("nan")
    sigma = around.std(ddof=1)
    return float(abs(inside.mean() - around.mean()) / sigma) if sigma > 0 else float("inf")


def disc_spectrum(frequency: np.ndarray, radius_mm: float, contrast_hu: float) -> np.ndarray:
    """Fourier transform (HU mm^2) of a disc of ``contrast_hu`` and ``radius_mm`` at radial
    ``frequency`` (cycles/mm)."""
    f = np.asarray(frequency, dtype=np.float64)
    x = 2 * np.pi * radius_mm * f
    shape = np.where(x > 1e-9, 2 * j1(np.where(x > 1e-9, x, 1.0)) / np.where(x > 1e-9, x, 1.0), 1.0)
    return contrast_hu * np.pi * radius_mm**2 * shape


def npw_detectability(nps: NoisePowerSpectrum, radius_mm: float, contrast_hu: float, ttf=None) -> float:
    """d'_NPW of a disc (module docstring) on ``nps``'s 2D frequency grid.

    ``ttf``: a callable ``ttf(frequency_mm)`` (e.g. ``np.interp`` over a measured TTF) or None for
    an ideal system (TTF = 1).
    """
    f = np.hypot(*np.meshgrid(nps.fy, nps.fx, indexing="ij"))
    w2 = disc_spectrum(f, radius_mm, contrast_hu) ** 2
    if ttf is not None:
        w2 = w2 * np.asarray(ttf(f), dtype=np.float64) ** 2
    cell = abs(nps.fy[1] - nps.fy[0]) * abs(nps.fx[1] - nps.fx[0])
    signal = w2.sum() * cell
    noise = (w2 * nps.nps).sum() * cell
    return float(signal / np.sqrt(noise)) if noise > 0 else float("inf")
