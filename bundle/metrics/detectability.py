"""Low-contrast detectability: CNR and the non-prewhitening observer's d' (FDA / AAPM TG-233).

- CNR: ``|mean(lesion) - mean(background)| / sigma(background)``, measured on the image.
- d'_NPW: the detectability of a known disc (contrast ``C`` HU, radius ``R`` mm) by an observer
  that correlates the image with the expected signal, from the system's TTF and NPS:

      d'^2 = ( sum |W|^2 TTF^2 )^2 / sum |W|^2 TTF^2 NPS        (sums over the 2D frequency grid,
                                                                 times the frequency cell)

  with ``W(f) = C * pi R^2 * 2 J1(2 pi R f) / (2 pi R f)`` the disc's Fourier transform. It grows
  with contrast and size, falls with noise, and, unlike CNR, weighs noise by where its power lies:
  a denoiser that only removes high-frequency noise helps a small disc more than a large one.
- d'_PW: the prewhitening observer's, ``d'^2 = sum |W|^2 TTF^2 / NPS``, the ideal observer's for a
  known disc in stationary Gaussian noise. No processing of an image raises the ideal observer's
  d' (the data processing inequality), so on one input slice, with the nominal contrast, it bounds
  what processing that slice alone can reach (a 3D method also sees the neighbouring slices, whose
  d'^2 add). Cauchy-Schwarz puts it above d'_NPW on the same frequencies (NPW here keeps the
  zero-frequency cell, which adds a few per cent of free signal).
"""

from __future__ import annotations

import numpy as np
from scipy.special import j1

from bundle.metrics.nps import NoisePowerSpectrum

__all__ = ["cnr", "disc_spectrum", "npw_detectability", "pw_detectability"]


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


def _signal_power(nps: NoisePowerSpectrum, radius_mm: float, contrast_hu: float, ttf) -> tuple[np.ndarray, float]:
    """``|W|^2 TTF^2`` of the disc on ``nps``'s 2D frequency grid, and the grid's cell area."""
    f = np.hypot(*np.meshgrid(nps.fy, nps.fx, indexing="ij"))
    w2 = disc_spectrum(f, radius_mm, contrast_hu) ** 2
    if ttf is not None:
        w2 = w2 * np.asarray(ttf(f), dtype=np.float64) ** 2
    return w2, abs(nps.fy[1] - nps.fy[0]) * abs(nps.fx[1] - nps.fx[0])


def npw_detectability(nps: NoisePowerSpectrum, radius_mm: float, contrast_hu: float, ttf=None) -> float:
    """d'_NPW of a disc (module docstring) on ``nps``'s 2D frequency grid.

    ``ttf``: a callable ``ttf(frequency_mm)`` (e.g. ``np.interp`` over a measured TTF) or None for
    an ideal system (TTF = 1).
    """
    w2, cell = _signal_power(nps, radius_mm, contrast_hu, ttf)
    signal = w2.sum() * cell
    noise = (w2 * nps.nps).sum() * cell
    return float(signal / np.sqrt(noise)) if noise > 0 else float("inf")


def pw_detectability(nps: NoisePowerSpectrum, radius_mm: float, contrast_hu: float, ttf=None) -> float:
    """d'_PW of a disc (module docstring) on ``nps``'s 2D frequency grid; ``ttf`` as for
    :func:`npw_detectability` (None: TTF = 1, which can only raise the bound).

    Frequencies without noise power are left out: the zero-frequency cell, which removing each
    ROI's mean empties, would otherwise make it infinite. That cell holds one of the grid's
    ``Ny * Nx`` frequencies, so the bound is the detectability over the rest of the spectrum (what
    the cell could add is measured in docs/quality.md: 5-16 % on the demo's patient phantom).
    """
    w2, cell = _signal_power(nps, radius_mm, contrast_hu, ttf)
    power = np.asarray(nps.nps, dtype=np.float64)
    measured = power > 1e-12 * max(float(power.max()), 1e-300)
    return float(np.sqrt((w2[measured] / power[measured]).sum() * cell))
