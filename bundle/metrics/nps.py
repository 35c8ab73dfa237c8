"""Noise power spectrum (NPS): how much noise there is AND what it looks like (its texture).

Medical physicists measure noise texture with the 2D NPS of square ROIs in uniform regions
(AAPM TG-233): each ROI's noise ``n`` (the image minus what is not noise: the ROI's mean, or the
clean truth when the simulation knows it), then

    NPS(fy, fx) = (dy * dx) / (Ny * Nx) * mean_over_ROIs |DFT(n)|^2        [HU^2 mm^2]

whose integral over frequency is the noise variance (Parseval). Radially averaged it is a curve
over spatial frequency (cycles/mm); its mean frequency ``sum f NPS(f) / sum NPS(f)`` summarises
the texture: a denoiser that smooths shifts power to low frequencies and lowers it (the "plastic"
look radiologists reject), even when its PSNR rises. Reports give it relative to the full-dose
scan's (1.0 = the same texture).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["NoisePowerSpectrum", "noise_power_spectrum", "square_rois"]


@dataclass
class NoisePowerSpectrum:
    """A 2D NPS and its radial average.

    Attributes:
        nps: ``(Ny, Nx)`` HU^2 mm^2, zero frequency at ``[0, 0]`` (numpy FFT order).
        fy, fx: frequencies (cycles/mm) of its rows and columns.
        frequency, radial: the radial average, ``radial[i]`` at ``frequency[i]`` (bin centres, up
            to the Nyquist frequency of the coarser axis).
        variance: the noise variance of the ROIs (HU^2), the NPS's integral.
        num_rois: ROIs averaged.
    """

    nps: np.ndarray
    fy: np.ndarray
    fx: np.ndarray
    frequency: np.ndarray
    radial: np.ndarray
    variance: float
    num_rois: int

    @property
    def integral(self) -> float:
        """Sum of the 2D NPS times the frequency cell: equals ``variance``."""
        return float(self.nps.sum() * abs(self.fy[1] - self.fy[0]) * abs(self.fx[1] - self.fx[0]))

    @property
    def mean_frequency(self) -> float:
        """Power-weighted mean radial frequency (cycles/mm), over the 2D spectrum."""
        f = np.hypot(*np.meshgrid(self.fy, self.fx, indexing="ij"))
        total = float(self.nps.sum())
        return float((f * self.nps).sum() / total) if total > 0 else float("nan")

    def share_below(self, fraction_of_nyquist: float) -> float:
        """Share of the power with both ``|fy|`` and ``|fx|`` at most ``fraction_of_nyquist`` of
        their Nyquist frequency: a square, the band a grid ``1 / fraction`` times coarser per axis
        can hold (``1/8``: what an 8x in-plane latent can represent at all)."""
        ny, nx = self.fy.size, self.fx.size
        keep_y = np.abs(self.fy) <= fraction_of_nyquist * np.abs(self.fy).max() * (1 + 1e-9) if ny > 1 else np.ones(1, bool)
        keep_x = np.abs(self.fx) <= fraction_of_nyquist * np.abs(self.fx).max() * (1 + 1e-9) if nx > 1 else np.ones(1, bool)
        total = float(self.nps.sum())
        return float(self.nps[np.ix_(keep_y, keep_x)].sum() / total) if total > 0 else float("nan")

    def at(self, frequency_mm: np.ndarray) -> np.ndarray:
        """The radial NPS interpolated at ``frequency_mm`` (cycles/mm)."""
        return np.interp(frequency_mm, self.frequency, self.radial)


def square_rois(noise: np.ndarray, mask: np.ndarray, size: int, max_rois: int | None = None) -> np.ndarray:
    """``(N, size, size)`` non-overlapping ROIs of ``noise`` (slices, rows, cols) lying wholly
    inside ``mask``: per slice, candidate positions on a grid of step ``size // 4`` are taken
    greedily, row by row, skipping any that overlaps one already taken. Empty when none fits."""
    noise = np.asarray(noise, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if noise.shape != mask.shape or noise.ndim != 3:
        raise ValueError(f"noise {noise.shape} and mask {mask.shape} must be one (slices, rows, cols) shape")
    rois = []
    _, rows, cols = noise.shape
    step = max(1, size // 4)
    for k in range(noise.shape[0]):
        if not mask[k].any():
            continue
        # a window lies inside the mask when the mask's sum over it is size^2 (summed-area table)
        table = np.pad(mask[k].astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        inside = (table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]) == size * size
        taken = np.zeros((rows, cols), bool)
        for r in range(0, rows - size + 1, step):
            for c in range(0, cols - size + 1, step):
                if inside[r, c] and not taken[r : r + size, c : c + size].any():
                    taken[r : r + size, c : c + size] = True
                    rois.append(noise[k, r : r + size, c : c + size])
                    if max_rois is not None and len(rois) >= max_rois:
                        return np.stack(rois)
    return np.stack(rois) if rois else np.empty((0, size, size))


def noise_power_spectrum(
    rois: np.ndarray, pixel_mm: float | Sequence[float], detrend: str = "mean", bins: int | None = None
) -> NoisePowerSpectrum:
    """The NPS of ``rois`` ``(N, Ny, Nx)`` of noise in HU (module docstring).

    Args:
        rois: noise ROIs; with ``detrend="mean"`` each ROI's mean is removed first, with
            ``"plane"`` a fitted plane (slow shading is not noise), with ``"none"`` nothing (the
            ROIs are already noise, e.g. output minus clean truth).
        pixel_mm: ``(row_mm, col_mm)`` or one size.
        bins: radial bins up to Nyquist (default ``min(Ny, Nx) // 2``).
    """
    rois = np.asarray(rois, dtype=np.float64)
    if rois.ndim != 3 or rois.shape[0] == 0:
        raise ValueError(f"need (N, Ny, Nx) ROIs with N >= 1, got shape {rois.shape}")
    dy, dx = (float(pixel_mm), float(pixel_mm)) if np.isscalar(pixel_mm) else (float(pixel_mm[0]), float(pixel_mm[1]))
    n, ny, nx = rois.shape
    if detrend == "mean":
        rois = rois - rois.mean(axis=(1, 2), keepdims=True)
    elif detrend == "plane":
        yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        design = np.stack([np.ones(ny * nx), yy.ravel(), xx.ravel()], axis=1)
        coef, *_ = np.linalg.lstsq(design, rois.reshape(n, -1).T, rcond=None)
        rois = rois - (design @ coef).T.reshape(n, ny, nx)
    elif detrend != "none":
        raise ValueError(f"detrend must be 'mean', 'plane' or 'none', got {detrend!r}")
    spectra = np.abs(np.fft.fft2(rois)) ** 2
    nps = spectra.mean(axis=0) * (dy * dx) / (ny * nx)
    fy, fx = np.fft.fftfreq(ny, d=dy), np.fft.fftfreq(nx, d=dx)
    radius = np.hypot(*np.meshgrid(fy, fx, indexing="ij"))
    nyquist = min(0.5 / dy, 0.5 / dx)
    bins = bins or min(ny, nx) // 2
    edges = np.linspace(0.0, nyquist, bins + 1)
    which = np.digitize(radius.ravel(), edges) - 1
    inside = (which >= 0) & (which < bins)
    counts = np.bincount(which[inside], minlength=bins)
    sums = np.bincount(which[inside], weights=nps.ravel()[inside], minlength=bins)
    radial = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    centres = 0.5 * (edges[:-1] + edges[1:])
    keep = counts > 0
    return NoisePowerSpectrum(
        nps=nps, fy=fy, fx=fx, frequency=centres[keep], radial=radial[keep],
        variance=float((rois**2).mean()), num_rois=n,
    )
