"""Resolution: the task transfer function (TTF) from the edge of a circular insert (AAPM TG-233).

A denoiser's resolution depends on contrast and noise, so it is measured on the output itself,
at an insert's edge: the edge spread function (ESF) is the mean HU against the distance to the
insert's centre (all pixels of the insert's slices, binned finer than a pixel: the circle samples
every sub-pixel phase), its derivative the line spread function (LSF), and the magnitude of the
LSF's Fourier transform, normalised at zero frequency, the TTF. TTF50 (cycles/mm, "lp/mm") is
where it falls to one half; reports give it relative to the full-dose scan's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import windows

__all__ = ["TaskTransferFunction", "task_transfer_function"]


@dataclass
class TaskTransferFunction:
    """``ttf[i]`` at ``frequency[i]`` (cycles/mm); ``esf`` at ``radius_mm`` (the edge profile)."""

    frequency: np.ndarray
    ttf: np.ndarray
    radius_mm: np.ndarray
    esf: np.ndarray

    def frequency_at(self, level: float = 0.5) -> float:
        """The first frequency where the TTF falls to ``level`` (linear interpolation); NaN if never."""
        below = np.flatnonzero(self.ttf <= level)
        if not below.size or below[0] == 0:
            return float("nan")
        i = below[0]
        f0, f1, t0, t1 = self.frequency[i - 1], self.frequency[i], self.ttf[i - 1], self.ttf[i]
        return float(f0 + (t0 - level) * (f1 - f0) / (t0 - t1))

    @property
    def ttf50(self) -> float:
        return self.frequency_at(0.5)


def task_transfer_function(
    image: np.ndarray,
    centre: Sequence[float],
    radius_mm: float,
    pixel_mm: float,
    bin_mm: float | None = None,
    half_width_mm: float | None = None,
) -> TaskTransferFunction:
    """The TTF of a circular insert's edge.

    Args:
        image: ``(rows, cols)`` or ``(slices, rows, cols)`` HU; slices are stacked (an insert
            that is a cylinder along the slice axis).
        centre: ``(row, col)`` of the insert's centre, in pixels (fractions allowed).
        radius_mm: the insert's nominal radius.
        pixel_mm: in-plane pixel size (square pixels).
        bin_mm: ESF bin width; default a tenth of a pixel.
        half_width_mm: the profile runs this far either side of the edge; default 8 pixels (and
            never past the centre).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = image[None]
    bin_mm = bin_mm or pixel_mm / 10
    rows, cols = image.shape[1:]
    yy, xx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    r = np.hypot(yy - centre[0], xx - centre[1]) * pixel_mm
    half = min(half_width_mm or 8 * pixel_mm, radius_mm)
    lo, hi = radius_mm - half, radius_mm + half
    ring = (r >= lo) & (r < hi)
    if not ring.any():
        raise ValueError("no pixels around the insert's edge: check centre and radius")
    edges = np.arange(lo, hi + bin_mm, bin_mm)
    which = np.digitize(r[ring], edges) - 1
    n_bins = len(edges) - 1
    counts = np.bincount(which, minlength=n_bins)[:n_bins]
    values = image[:, ring]  # (slices, pixels)
    sums = np.bincount(np.tile(which, values.shape[0]), weights=values.ravel(), minlength=n_bins)[:n_bins]
    counts = counts * values.shape[0]
    centres = 0.5 * (edges[:-1] + edges[1:])
    filled = counts > 0
    esf = np.interp(centres, centres[filled], sums[filled] / counts[filled])  # empty bins: interpolated
    lsf = np.gradient(esf, bin_mm)
    # taper the outer half of the profile, where only noise is left (the edge is central); a taper
    # reaching the centre would narrow the LSF and raise the TTF
    lsf *= windows.tukey(len(lsf), alpha=0.5)
    spectrum = np.abs(np.fft.rfft(lsf))
    frequency = np.fft.rfftfreq(len(lsf), d=bin_mm)
    keep = frequency <= 0.5 / pixel_mm
    ttf = spectrum / spectrum[0] if spectrum[0] > 0 else np.full_like(spectrum, np.nan)
    return TaskTransferFunction(frequency=frequency[keep], ttf=ttf[keep], radius_mm=centres, esf=esf)
