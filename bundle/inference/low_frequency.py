"""The source's own low frequencies in the output: the local mean HU comes from the scan itself.

Low-dose CT noise lives at high spatial frequencies: in this project's data under 1 % of its
power lies below 1/8 of the Nyquist frequency, where 97 % of the anatomy's power lies
(``scripts/latent_nyquist.py``, ``docs/quality.md``). A band the noise barely touches needs no
denoising, and every change a network makes there is a bias: a shifted insert, a tissue class
moved by a few HU. :func:`keep_source_low_frequencies` replaces the output's in-plane low band
by the source's::

    out = output + G_sigma * (source - output)

``G_sigma`` a 2D Gaussian per slice, ``sigma`` in pixels. Its response is 1/2 at
``f = sqrt(ln 2 / (2 pi^2)) / sigma`` cycles per pixel: ``sigma = 3`` puts it at 1/16 cycle per
pixel (1/8 of Nyquist, the latent grid of the 8x VAE). The source's noise that comes back is the
small share below that band; a constant or slowly varying HU error of the output is removed
exactly.

A Gaussian spreads a material's level error across its borders: a bone cortex that reads 5 HU high
passes a fraction of that to the soft tissue beside it and keeps the rest. With ``levels`` (HU values,
ascending) the band is taken per tissue level instead, guided by the output: each voxel belongs to
the two levels around its HU with linear (hat) weights ``w_k``, and each level's correction is the
Gaussian mean of ``source - output`` over that level's voxels only (normalised convolution, the
piecewise bilateral filter of Durand and Dorsey 2002)::

    out = output + sum_k w_k * G_sigma * (w_k * (source - output)) / G_sigma * w_k

Where a level holds less than ``MIN_SUPPORT`` of the Gaussian's mass around a voxel (a thin or
isolated structure, whose own few voxels would bring their noise back) that level's correction
leans towards the plain Gaussian's, in proportion.

With ``sigma_z`` the Gaussian reaches along the slices as well: the scanner (and the simulator)
draws each slice's noise independently while a material's level error runs on through its
neighbouring slices, so averaging the band's residual over them brings back less of the source's
noise (a 1D Gaussian passes 1 / (2 sqrt(pi) sigma_z) of white noise's variance) and removes the
same level error. That saving pays for a narrower in-plane Gaussian, which passes more of a small
lesion's contrast from the source: the recipe's default is 1 px in-plane over 3 slices
(``configs/train.yaml``; chosen on validation, ``docs/quality.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from bundle.networks.frequency import inplane_lowpass, slice_lowpass
from bundle.utils.validation import SettingError

# the tissue levels of ``levels="tissue"`` (HU): air, lung, fat, water, soft tissue, vessels with
# contrast, trabecular and cortical bone; the QA inserts' materials each sit on one
TISSUE_LEVELS = (-1000.0, -700.0, -400.0, -100.0, 0.0, 60.0, 150.0, 400.0, 700.0, 1000.0, 1400.0, 2000.0)
# below this share of the Gaussian's mass a level's own mean leans towards the plain band's
MIN_SUPPORT = 0.25
# slices per block of the per-level maps (memory); with sigma_z each block also filters margins, whose
# share of the work halves in blocks of 32 (scripts/source_band_timing.py: 22 s instead of 29-36 s per
# 512 x 512 x 133 volume at 1 or 1.5 px over 3 slices) while each slice alone runs fastest in blocks of 16
SLICE_BLOCK = 16
SLICE_BLOCK_Z = 32


def keep_source_low_frequencies(
    output_hu: torch.Tensor, source_hu: torch.Tensor, sigma: float, levels: Sequence[float] = (),
    min_support: float = MIN_SUPPORT, sigma_z: float = 0.0,
) -> torch.Tensor:
    """``output + G_sigma * (source - output)`` per axial slice; ``(..., S, H, W)`` HU tensors of one
    shape; ``sigma`` in pixels (0: the output unchanged). Borders are mirrored
    (:func:`bundle.networks.frequency.inplane_lowpass`). ``levels`` (ascending HU, at least two):
    the band per tissue level, guided by the output (module docstring); empty: one Gaussian.
    ``min_support``: the share of the Gaussian's mass below which a level's own mean leans towards
    the plain band's (in (0, 1]; the enhancer's ``source_lowpass_min_support``). ``sigma_z`` (slices,
    0: each slice alone): the same Gaussian also along the slice axis, the band's residual averaged
    over neighbouring slices too, whose noise the scanner draws independently."""
    if sigma <= 0:
        return output_hu
    if output_hu.shape != source_hu.shape:
        raise ValueError(f"output {tuple(output_hu.shape)} and source {tuple(source_hu.shape)} differ in shape.")

    def lowpass(x: torch.Tensor) -> torch.Tensor:
        return slice_lowpass(inplane_lowpass(x, sigma, by_matrix=True), sigma_z)

    if not levels:
        return output_hu + lowpass((source_hu - output_hu).float()).to(output_hu.dtype)
    # blocks of slices bound the memory of the per-level maps; with sigma_z each block is filtered with
    # a margin of the slices its Gaussian reaches, then cropped, so the blocks join seamlessly
    margin = int(4 * sigma_z + 0.5) if sigma_z > 0 else 0
    count = output_hu.shape[-3]
    blocks = []
    step = SLICE_BLOCK_Z if margin else SLICE_BLOCK
    for start in range(0, count, step):
        stop = min(start + step, count)
        lo, hi = max(start - margin, 0), min(stop + margin, count)
        block = (..., slice(lo, hi), slice(None), slice(None))
        correction = _levels_correction(output_hu[block], source_hu[block], lowpass, levels, min_support)
        blocks.append(correction[..., start - lo : stop - lo, :, :])
    return output_hu + torch.cat(blocks, dim=-3).to(output_hu.dtype)


def _levels_correction(output_hu: torch.Tensor, source_hu: torch.Tensor, lowpass, levels,
                       min_support: float) -> torch.Tensor:
    """``sum_k w_k * G(w_k r) / G(w_k)`` (leaning towards ``G(r)`` where a level's support is thin)."""
    residual = (source_hu - output_hu).float()
    plain = lowpass(residual)
    correction = torch.zeros_like(residual)
    for weight in level_weights(output_hu.float(), levels):
        if not weight.any():
            continue
        support = lowpass(weight)
        own = lowpass(weight * residual) / support.clamp_min(1e-6)
        trust = (support / min_support).clamp(max=1.0)
        correction += weight * (plain + trust * (own - plain))
    return correction


def check_lowpass_levels(setting: str, value: Any) -> tuple[float, ...]:
    """The source band's tissue levels: ``"tissue"`` (the built-in HU levels), ``"none"``/empty (one
    Gaussian), or at least two ascending HU numbers (a list, or one comma-separated string)."""
    allowed = "'tissue', 'none' or at least two ascending HU values (e.g. -1000,0,60,1000)"
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "tissue":
            return TISSUE_LEVELS
        if text in ("none", ""):
            return ()
        try:
            value = [float(v) for v in text.split(",")]
        except ValueError:
            raise SettingError(setting, value, allowed) from None
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise SettingError(setting, value, allowed)
    levels = tuple(float(v) for v in value)
    if len(levels) == 0:
        return ()
    if len(levels) < 2 or any(not math.isfinite(v) for v in levels) or any(b <= a for a, b in zip(levels, levels[1:])):
        raise SettingError(setting, value, allowed)
    return levels


def check_min_support(setting: str, value: Any) -> float:
    """The per-level band's support threshold: a share of the Gaussian's mass in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise SettingError(setting, value, "a share of the Gaussian's mass in (0, 1] (e.g. 0.25 or 1)")
    return float(value)


def check_sigma_z(setting: str, value: Any) -> float:
    """The band's Gaussian along the slices: a number of slices >= 0 (0: each slice alone)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
        raise SettingError(setting, value, "a number of slices >= 0 (0: each slice alone)")
    return float(value)


def level_weights(guide: torch.Tensor, levels: Sequence[float]):
    """Hat weights of ``guide`` on ``levels`` (ascending HU): 1 at a level, falling linearly to 0 at
    its neighbours, flat beyond the first and last; they sum to 1 at every voxel."""
    levels = check_lowpass_levels("levels", list(levels))
    if not levels:
        raise ValueError("levels must be at least two ascending HU values, got none.")
    for k, level in enumerate(levels):
        weight = torch.ones_like(guide)
        if k > 0:
            weight = torch.minimum(weight, ((guide - levels[k - 1]) / (level - levels[k - 1])).clamp(0, 1))
        if k < len(levels) - 1:
            weight = torch.minimum(weight, ((levels[k + 1] - guide) / (levels[k + 1] - level)).clamp(0, 1))
        yield weight
