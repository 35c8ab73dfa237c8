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
  d' (the data processing inequality), so with the nominal contrast the input's bounds what any
  enhancer can make truly detectable. On one slice that bounds processing of that slice alone; a
  3D method also sees the neighbouring slices, and where their noise is independent (the
  simulator scans each slice on its own) the slices' d'^2 add: pass the object's cross-section
  radius on every slice it crosses for the 3D bound.

Both observers are summed over the same frequencies: those where noise was measured. Removing each
ROI's mean empties the zero-frequency cell, which would make d'_PW infinite and hand d'_NPW free
signal; without it Cauchy-Schwarz keeps d'_PW >= d'_NPW.
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


def _measured(nps: NoisePowerSpectrum) -> np.ndarray:
    """The frequency cells that hold noise power (module docstring): all but the emptied zero
    frequency, and any cell a non-finite spectrum left undefined."""
    power = np.asarray(nps.nps, dtype=np.float64)
    finite = np.isfinite(power)
    if not finite.any():
        return finite
    return finite & (power > 1e-12 * max(float(power[finite].max()), 1e-300))


def npw_detectability(nps: NoisePowerSpectrum, radius_mm: float, contrast_hu: float, ttf=None) -> float:
    """d'_NPW of a disc (module docstring) on ``nps``'s 2D frequency grid; NaN without a measured
    frequency.

    ``ttf``: a callable ``ttf(frequency_mm)`` (e.g. ``np.interp`` over a measured TTF) or None for
    an ideal system (TTF = 1).
    """
    measured = _measured(nps)
    if not measured.any():
        return float("nan")
    w2, cell = _signal_power(nps, radius_mm, contrast_hu, ttf)
    signal = w2[measured].sum() * cell
    noise = (w2[measured] * np.asarray(nps.nps, dtype=np.float64)[measured]).sum() * cell
    return float(signal / np.sqrt(noise)) if noise > 0 else 0.0  # no signal where noise was measured


def pw_detectability(nps: NoisePowerSpectrum, radius_mm, contrast_hu: float, ttf=None) -> float:
    """d'_PW of a disc (module docstring) on ``nps``'s 2D frequency grid; NaN without a measured
    frequency. ``ttf`` as for :func:`npw_detectability` (None: TTF = 1, which can only raise it).

    ``radius_mm``: the disc's radius on one slice, or a sequence of an object's cross-section radii
    on the slices it crosses, whose noise is independent with this NPS: the slices' d'^2 add (the
    3D ideal observer). The zero-frequency cell is left out; what it could add is measured in
    docs/quality.md (5-16 % on the demo's patient phantom).
    """
    measured = _measured(nps)
    if not measured.any():
        return float("nan")
    power = np.asarray(nps.nps, dtype=np.float64)[measured]
    total = 0.0
    for radius in np.atleast_1d(np.asarray(radius_mm, dtype=np.float64)):
        w2, cell = _signal_power(nps, float(radius), contrast_hu, ttf)
        total += (w2[measured] / power).sum() * cell
    return float(np.sqrt(total))
