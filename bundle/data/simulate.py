"""Physics-based low-dose CT simulation, one axial slice at a time.

Pipeline per slice, for both members of a pair (only the photon flux differs):

1. HU to linear attenuation: ``mu = MU_WATER_PER_MM * (1 + HU / 1000)``, clipped at 0 (air and
   anything below -1000 HU, such as the -1024 padding outside a scanner's field of view).
2. ``mu`` times the pixel size (mm) is forward projected with ``skimage.transform.radon``
   (parallel beam, ``angles_per_pixel`` x image size views over 180 degrees, 1.5 x by default:
   192 views for a 128 x 128 slice). ``radon`` only sees what lies inside the inscribed circle,
   so the slice is first zero-padded (air) to a square whose inscribed circle holds the whole
   slice, corners included; the reconstruction is cropped back afterwards.
3. Counts ``N = Poisson(I0 exp(-p)) + Normal(0, ELECTRONIC_NOISE_VAR)``, clipped to ``N >= 1``.
4. ``p_hat = -ln(N / I0)``, filtered back-projection (``iradon``, ramp filter by default, linear
   interpolation), back to HU.

Photon starvation (``reading_i0``): a simulated bin (2.7 mm, one of 192 views on the reference
geometry) stands for many readings of a real scanner (about 1000 views of sub-millimetre channels),
each with its own electronic noise and its own log. By default one bin is one reading, so at the
calibrated flux no reading ever nears the electronic noise floor and starvation never happens.
``reading_i0`` (full-dose photons per real reading) splits each bin into ``k = round(I0 /
reading_i0)`` readings of ``I0 / k`` photons, counts and logs each (steps 3-4) and averages the
logs: the noise of well-lit bins is unchanged (``k`` readings of ``I0 / k`` carry the same
information), while behind long or dense paths at low dose a reading's counts approach the
electronic noise, the log of noisy low counts (and the clip) biases ``p_hat``, and low-frequency
shading and streaks appear as they do on a scanner (docs/quality.md, "Photon starvation").

The target (full dose) uses ``I0``, the source ``dose * I0``: both go through the same
projection/reconstruction round trip, so the pair differs by noise only and a model cannot learn
the round trip itself. The target is therefore not noise-free (about 12 HU in soft tissue).

I0 is photons per detector bin per view. The reconstructed noise variance scales as
``1 / (I0 * n_views * pixel_mm**2)``, so one fixed I0 gives very different noise on a 128 x 128
slice at 2.7 mm and a 512 x 512 slice at 0.68 mm. ``i0=None`` (the default) therefore scales
:data:`REFERENCE_I0`, calibrated on the reference geometry (128 x 128 at 2.7 mm, 192 views, a
346 mm field of view), to the geometry at hand, which keeps the full-dose noise near the
calibrated ~12 HU in soft tissue of an adult-sized body whatever the matrix; pass a number to
fix the flux instead. Slice thickness is not modelled (each slice is an independent 2D scan).

Randomness: slice ``k`` draws from ``SeedSequence(seed, spawn_key=(k,))`` (target and source from
two children of it), so the result depends on the seed only, never on the number of workers or
the order slices are processed in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ELECTRONIC_NOISE_VAR",
    "MU_WATER_PER_MM",
    "REFERENCE_I0",
    "ScanGeometry",
    "calibrated_i0",
    "hu_to_mu",
    "mu_to_hu",
    "noise_free_scan",
    "readings_per_bin",
    "scan_geometry",
    "simulate_pair",
    "simulate_slice_pair",
]

logger = logging.getLogger(__name__)

MU_WATER_PER_MM = 0.019
"""Linear attenuation of water near 70 keV, 1/mm."""

ELECTRONIC_NOISE_VAR = 10.0
"""Variance of the additive electronic noise, in counts squared."""

REFERENCE_PIXEL_MM = 2.7
REFERENCE_VIEWS = 192
REFERENCE_I0 = 1.0e6
"""Full-dose photons per bin per view on the reference geometry (128 x 128 at 2.7 mm, 192 views).

Calibrated on the demo phantoms (bodies about 300 x 220 mm): the liver of the full-dose member
shows about 12 HU of noise, the quarter-dose member about 25 HU.
"""


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """HU to linear attenuation (1/mm), clipped at 0: nothing attenuates less than vacuum."""
    return np.maximum(MU_WATER_PER_MM * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0), 0.0)


def mu_to_hu(mu: np.ndarray) -> np.ndarray:
    """Linear attenuation (1/mm) to HU."""
    return 1000.0 * (np.asarray(mu, dtype=np.float64) / MU_WATER_PER_MM - 1.0)


@dataclass(frozen=True)
class ScanGeometry:
    """Parallel-beam geometry of one axial slice.

    ``padded_size`` is the side of the square the slice is zero-padded to, large enough that the
    inscribed circle (what ``radon(circle=True)`` sees) holds the whole slice.
    """

    rows: int
    cols: int
    pixel_mm: float
    n_views: int
    padded_size: int

    @property
    def theta(self) -> np.ndarray:
        """View angles in degrees over [0, 180)."""
        return np.linspace(0.0, 180.0, self.n_views, endpoint=False)

    @property
    def offsets(self) -> tuple[int, int]:
        """Row and column of the slice's first pixel inside the padded square."""
        return (self.padded_size - self.rows) // 2, (self.padded_size - self.cols) // 2


def scan_geometry(shape: Sequence[int], pixel_mm: float, angles_per_pixel: float = 1.5) -> ScanGeometry:
    """Geometry for slices of ``shape = (rows, cols)`` with square pixels of ``pixel_mm``."""
    rows, cols = int(shape[-2]), int(shape[-1])
    if rows < 2 or cols < 2:
        raise ValueError(f"a slice needs at least 2 x 2 pixels, got {rows} x {cols}")
    if not pixel_mm > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_mm}")
    n_views = max(8, int(round(angles_per_pixel * max(rows, cols))))
    # +2: a margin for the interpolation of radon's rotations at the circle's edge.
    padded = int(math.ceil(math.hypot(rows, cols))) + 2
    return ScanGeometry(rows, cols, float(pixel_mm), n_views, padded)


def calibrated_i0(geometry: ScanGeometry) -> float:
    """Full-dose I0 for ``geometry`` that gives the noise :data:`REFERENCE_I0` gives on the reference.

    FBP noise variance goes as ``1 / (I0 * n_views * pixel_mm**2)`` (a ramp filter up to the
    detector's Nyquist frequency), hence the scaling.
    """
    return (
        REFERENCE_I0
        * (REFERENCE_VIEWS / geometry.n_views)
        * (REFERENCE_PIXEL_MM / geometry.pixel_mm) ** 2
    )


def _line_integrals(hu_slice: np.ndarray, geometry: ScanGeometry) -> np.ndarray:
    """Noise-free line integrals ``p`` (dimensionless), shape (padded_size, n_views)."""
    from skimage.transform import radon

    padded = np.zeros((geometry.padded_size, geometry.padded_size), dtype=np.float64)
    r0, c0 = geometry.offsets
    padded[r0 : r0 + geometry.rows, c0 : c0 + geometry.cols] = hu_to_mu(hu_slice) * geometry.pixel_mm
    return radon(padded, theta=geometry.theta, circle=True)


def readings_per_bin(i0_full: float, reading_i0: float | None) -> int:
    """How many real detector readings one simulated bin stands for (1 without ``reading_i0``)."""
    if reading_i0 is None:
        return 1
    if not reading_i0 > 0:
        raise ValueError(f"photons per reading must be positive, got {reading_i0}")
    return max(1, round(i0_full / reading_i0))


def _noisy_line_integrals(p: np.ndarray, i0: float, rng: np.random.Generator, readings: int = 1) -> np.ndarray:
    """Photon counting with electronic noise, then the log transform: ``p_hat = -ln(N / I0)``.

    With ``readings`` k > 1 each bin is k readings of ``I0 / k`` photons, each counted, clipped
    and logged on its own; ``p_hat`` is the mean of their logs (photon starvation).
    """
    # k = 1 draws the same numbers in the same order as a plain (bins) array: datasets made
    # before the setting stay bit-identical
    per_reading = i0 / readings
    expected = np.broadcast_to((per_reading * np.exp(-p))[..., None], p.shape + (readings,))
    counts = rng.poisson(expected).astype(np.float64)
    counts += rng.normal(0.0, math.sqrt(ELECTRONIC_NOISE_VAR), size=counts.shape)
    np.maximum(counts, 1.0, out=counts)
    return -np.log(counts / per_reading).mean(axis=-1)


def _reconstruct(p_hat: np.ndarray, geometry: ScanGeometry, filter_name: str) -> np.ndarray:
    """Filtered back-projection, cropped back to the slice; HU, float32 (rows, cols)."""
    from skimage.transform import iradon

    mu_pixel = iradon(
        p_hat,
        theta=geometry.theta,
        output_size=geometry.padded_size,
        filter_name=filter_name,
        interpolation="linear",
        circle=True,
    )
    r0, c0 = geometry.offsets
    mu = mu_pixel[r0 : r0 + geometry.rows, c0 : c0 + geometry.cols] / geometry.pixel_mm
    return mu_to_hu(mu).astype(np.float32)


def simulate_slice_pair(
    hu_slice: np.ndarray,
    geometry: ScanGeometry,
    i0_full: float,
    dose: float,
    seed: np.random.SeedSequence,
    filter_name: str = "ramp",
    readings: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) HU float32 (rows, cols) of one slice; ``seed`` is this slice's own.

    ``readings``: real detector readings per simulated bin (:func:`readings_per_bin`), the same
    for both members: one scanner, two fluxes.
    """
    p = _line_integrals(hu_slice, geometry)
    target_seed, source_seed = seed.spawn(2)
    target = _reconstruct(
        _noisy_line_integrals(p, i0_full, np.random.default_rng(target_seed), readings), geometry, filter_name
    )
    source = _reconstruct(
        _noisy_line_integrals(p, dose * i0_full, np.random.default_rng(source_seed), readings),
        geometry,
        filter_name,
    )
    return source, target


def _pixel_mm(pixel_spacing_mm: float | Sequence[float]) -> float:
    """One in-plane pixel size from a number, (row_mm, col_mm) or (slice_mm, row_mm, col_mm)."""
    if np.isscalar(pixel_spacing_mm):
        return float(pixel_spacing_mm)
    values = [float(v) for v in pixel_spacing_mm]
    if len(values) not in (2, 3):
        raise ValueError(f"pixel spacing must be a number or 2/3 values, got {pixel_spacing_mm}")
    row_mm, col_mm = values[-2], values[-1]
    if abs(row_mm - col_mm) > 0.01 * max(row_mm, col_mm):
        # radon assumes square pixels; CT slices nearly always have them.
        logger.warning("non-square pixels %.4g x %.4g mm: simulating with their mean", row_mm, col_mm)
    return 0.5 * (row_mm + col_mm)


def simulate_pair(
    hu_volume: np.ndarray,
    pixel_spacing_mm: float | Sequence[float],
    dose: float = 0.25,
    i0: float | None = None,
    seed: int = 0,
    *,
    workers: int = 2,
    executor: Executor | None = None,
    angles_per_pixel: float = 1.5,
    filter_name: str = "ramp",
    reading_i0: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a (low-dose source, full-dose target) pair from a normal-dose volume.

    Args:
        hu_volume: HU, (slices, rows, cols) or one slice (rows, cols).
        pixel_spacing_mm: in-plane pixel size in mm: a number, (row_mm, col_mm) or a volume's
            (slice_mm, row_mm, col_mm).
        dose: dose fraction of the source; its flux is ``dose * I0``.
        i0: full-dose photons per detector bin per view; ``None`` scales :data:`REFERENCE_I0`
            to this geometry (:func:`calibrated_i0`).
        seed: the whole pair is a function of the seed (and the inputs).
        workers: slices run in this many threads (skimage's projectors release the GIL);
            ignored when ``executor`` is given.
        executor: an executor to reuse across volumes.
        angles_per_pixel: views over 180 degrees per pixel of the larger slice side.
        filter_name: FBP filter, any of ``iradon``'s (``ramp``, ``shepp-logan``, ``hann``, ...).
        reading_i0: full-dose photons per reading of the modelled scanner: each bin becomes
            ``round(I0 / reading_i0)`` readings, logged one by one (photon starvation at low
            dose; see the module's notes). ``None``: one reading per bin, no starvation.

    Returns:
        ``(source_hu, target_hu)``, float32, the shape of ``hu_volume``.
    """
    hu = np.asarray(hu_volume)
    if hu.ndim not in (2, 3):
        raise ValueError(f"expected (slices, rows, cols) or (rows, cols), got shape {hu.shape}")
    if not dose > 0:
        raise ValueError(f"dose fraction must be positive, got {dose}")
    if not np.all(np.isfinite(hu)):
        raise ValueError("the volume holds NaN or infinite values")
    volume = hu[None] if hu.ndim == 2 else hu
    geometry = scan_geometry(volume.shape[1:], _pixel_mm(pixel_spacing_mm), angles_per_pixel)
    i0_full = calibrated_i0(geometry) if i0 is None else float(i0)
    if not i0_full > 0:
        raise ValueError(f"I0 must be positive, got {i0_full}")
    readings = readings_per_bin(i0_full, reading_i0)

    def one_slice(index: int) -> tuple[np.ndarray, np.ndarray]:
        slice_seed = np.random.SeedSequence(seed, spawn_key=(index,))
        return simulate_slice_pair(volume[index], geometry, i0_full, dose, slice_seed, filter_name, readings)

    indices = range(volume.shape[0])
    if executor is not None:
        results = list(executor.map(one_slice, indices))
    elif workers > 1 and volume.shape[0] > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one_slice, indices))
    else:
        results = [one_slice(i) for i in indices]
    source = np.stack([r[0] for r in results])
    target = np.stack([r[1] for r in results])
    if hu.ndim == 2:
        return source[0], target[0]
    return source, target


def noise_free_scan(
    hu_volume: np.ndarray,
    pixel_spacing_mm: float | Sequence[float],
    *,
    workers: int = 2,
    executor: Executor | None = None,
    angles_per_pixel: float = 1.5,
    filter_name: str = "ramp",
) -> np.ndarray:
    """The scan of ``hu_volume`` without noise: the same projection and reconstruction as
    :func:`simulate_pair` with infinite flux. It is the truth a denoiser should reach: it keeps
    the scanner's blur and reconstruction error, which are in its input too and no denoiser is
    asked to remove, so ``target - noise_free_scan`` is the target's noise alone."""
    hu = np.asarray(hu_volume)
    volume = hu[None] if hu.ndim == 2 else hu
    geometry = scan_geometry(volume.shape[1:], _pixel_mm(pixel_spacing_mm), angles_per_pixel)

    def one_slice(index: int) -> np.ndarray:
        return _reconstruct(_line_integrals(volume[index], geometry), geometry, filter_name)

    indices = range(volume.shape[0])
    if executor is not None:
        slices = list(executor.map(one_slice, indices))
    elif workers > 1 and volume.shape[0] > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            slices = list(pool.map(one_slice, indices))
    else:
        slices = [one_slice(i) for i in indices]
    out = np.stack(slices)
    return out[0] if hu.ndim == 2 else out
