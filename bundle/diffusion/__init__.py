"""Noise schedule, DDIM sampling and whole-volume tiling, independent of any network
(diffusers-style seam): networks map (z_t, t, condition) -> output; the schedule defines z_t and
what the output means; the sampler turns outputs into a chain; tiling runs a network on windows
of a whole volume and blends them."""

from .ddim import DDIMSampler
from .schedule import DiffusionSchedule
from .tiling import TiledDenoiser, blend_weights, pad_to_min, tiled_apply, window_starts

__all__ = [
    "DiffusionSchedule",
    "DDIMSampler",
    "TiledDenoiser",
    "blend_weights",
    "pad_to_min",
    "tiled_apply",
    "window_starts",
]
