"""Noise schedule and DDIM sampling, independent of any network (diffusers-style seam):
networks map (z_t, t, condition) -> output; the schedule defines z_t and what the output means;
the sampler turns outputs into a chain."""

from .ddim import DDIMSampler
from .schedule import DiffusionSchedule

__all__ = ["DiffusionSchedule", "DDIMSampler"]
