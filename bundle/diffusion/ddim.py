"""DDIM sampling (Song et al. 2021, eq. 12) over any :class:`DiffusionSchedule` and any network.

Why not ``monai.networks.schedulers.DDIMScheduler`` (1.6.1): its ``set_timesteps`` returns
linspace timesteps but ``step`` moves by a fixed stride ``T // num_inference_steps``, so for 50
steps 19 steps land on a timestep other than the next one in the list and the chain is off its
trajectory (``tests/diffusion/test_ddim_sampler.py`` measures it). Here every step goes from ``t`` to the
NEXT timestep of the list, and the last step goes to abar = 1 (``t_prev = -1``), i.e. to x0.

Timestep spacing (``spacing``), with ``m = max_timestep`` and ``n`` steps:

- ``"trailing"`` (default): ``round((m + 1) * (n - i) / n) - 1``: starts at ``m`` (999) and the
  n gaps, counting the final one to ``-1``, are equal. With the cosine schedule and
  v-prediction this is the usual choice: the first step sees pure noise exactly as training did at
  t = 999, and no step is wasted near t = 0.
- ``"linspace"``: ``round(m * (n - 1 - i) / (n - 1))``: from ``m`` to 0, then a tiny last step 0 -> x0.
- ``"leading"``: ``floor(i * (m + 1) / n)`` reversed: ends at 0, starts below ``m``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bundle.utils.validation import check_eta, check_steps, check_strength

from .schedule import DiffusionSchedule

__all__ = ["DDIMSampler", "SPACINGS", "EPSILON_MAX_X0_GAIN"]

SPACINGS = ("trailing", "linspace", "leading")

# Default safe start for epsilon prediction: the first timestep is the largest t whose x0 estimate
# amplifies an epsilon error by at most this factor, sqrt((1 - abar_t) / abar_t) <= 100.
# Cosine, T = 1000: t = 992 (t = 999 has a gain of 2.0e4, t = 998 of 640).
EPSILON_MAX_X0_GAIN = 100.0


def _timesteps(spacing: str, max_timestep: int, n: int) -> list[int]:
    """n distinct decreasing integer timesteps in [0, max_timestep] (exact integer arithmetic)."""
    m = max_timestep
    if spacing == "trailing":
        # floor(x + 1/2) of x = (m + 1)(n - i)/n, minus 1
        return [(2 * (m + 1) * (n - i) + n) // (2 * n) - 1 for i in range(n)]
    if spacing == "linspace":
        if n == 1:
            return [m]
        return [(2 * m * (n - 1 - i) + (n - 1)) // (2 * (n - 1)) for i in range(n)]
    if spacing == "leading":
        return [(i * (m + 1)) // n for i in reversed(range(n))]
    raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")


class DDIMSampler:
    """Deterministic (eta = 0) or stochastic DDIM over a subset of the training timesteps.

    Args:
        schedule: the schedule the network was trained with (its ``prediction_type`` says how to
            read the network output).
        num_inference_steps: number of network evaluations for ``strength = 1``.
        eta: 0 gives the deterministic DDIM ODE; 1 gives DDPM-like ancestral noise.
        clip_x0: if set, clamp the x0 estimate to ``[-clip_x0, clip_x0]`` at every step and re-derive
            eps from the clamped x0 (keeps ``z_prev`` consistent with ``z_t``). Only meaningful if
            latents have a known range; off by default.
        spacing: ``"trailing"`` | ``"linspace"`` | ``"leading"`` (module docstring).
        max_timestep: first timestep of a ``strength = 1`` run. Default: ``T - 1``, except for
            ``prediction_type="epsilon"`` where it is :meth:`safe_max_timestep` (992 for cosine,
            T = 1000): at t = 999 the x0 estimate of an epsilon model multiplies its error by 2e4.

    Typical use::

        sampler = DDIMSampler(schedule, num_inference_steps=50)
        z0 = sampler.sample(lambda z, t: unet(z, t, condition), torch.randn(shape, generator=g))
        # or refine a source latent: start part-way (SDEdit)
        z = sampler.start_from(z_source, strength=0.5, noise=torch.randn_like(z_source))
        z0 = sampler.sample(denoise_fn, z, strength=0.5)
    """

    def __init__(
        self,
        schedule: DiffusionSchedule,
        num_inference_steps: int = 50,
        eta: float = 0.0,
        clip_x0: float | None = None,
        spacing: str = "trailing",
        max_timestep: int | None = None,
    ) -> None:
        self.schedule = schedule
        if max_timestep is None:
            if schedule.prediction_type == "epsilon":
                max_timestep = self.safe_max_timestep(schedule)
            else:
                max_timestep = schedule.num_train_timesteps - 1
        self.max_timestep = int(max_timestep)
        if not 0 <= self.max_timestep < schedule.num_train_timesteps:
            raise ValueError(f"max_timestep {max_timestep} outside [0, {schedule.num_train_timesteps})")
        self.num_inference_steps = check_steps("num_inference_steps", num_inference_steps, self.max_timestep + 1)
        check_eta("eta", eta)
        if clip_x0 is not None and clip_x0 <= 0:
            raise ValueError(f"clip_x0 must be positive or None, got {clip_x0}")
        self.eta = float(eta)
        self.clip_x0 = None if clip_x0 is None else float(clip_x0)
        self.spacing = spacing
        self.timesteps = _timesteps(spacing, self.max_timestep, self.num_inference_steps)

    @staticmethod
    def safe_max_timestep(schedule: DiffusionSchedule, max_x0_gain: float = EPSILON_MAX_X0_GAIN) -> int:
        """Largest t with sqrt((1 - abar_t) / abar_t) <= max_x0_gain (the eps -> x0 error gain)."""
        abar = schedule.alphas_cumprod
        ok = ((1.0 - abar) / abar).sqrt() <= max_x0_gain
        if not bool(ok[0]):
            raise ValueError(f"no timestep has an x0 gain <= {max_x0_gain}")
        return int(ok.nonzero().max())

    # ------------------------------------------------------------------ timesteps
    def num_steps(self, strength: float = 1.0) -> int:
        """Steps run for ``strength``: floor(strength * num_inference_steps + 1/2), at least 1."""
        check_strength("strength", strength)
        k = math.floor(strength * self.num_inference_steps + 0.5)
        if k < 1:
            raise ValueError(
                f"strength {strength} keeps no step of {self.num_inference_steps}: use a larger strength"
            )
        return k

    def timestep_pairs(self, strength: float = 1.0) -> list[tuple[int, int]]:
        """[(t, t_prev), ...] in sampling order; ``t_prev = -1`` is the final step to abar = 1.
        ``strength < 1`` keeps the last ``num_steps(strength)`` pairs (the low-noise end)."""
        pairs = list(zip(self.timesteps, self.timesteps[1:] + [-1]))
        return pairs[len(pairs) - self.num_steps(strength) :]

    def start_timestep(self, strength: float = 1.0) -> int:
        return self.timestep_pairs(strength)[0][0]

    def start_from(self, z_source: torch.Tensor, strength: float, noise: torch.Tensor) -> torch.Tensor:
        """Noise ``z_source`` to the first timestep of a ``strength`` run (SDEdit-style start)."""
        return self.schedule.add_noise(z_source, noise, self.start_timestep(strength))

    # ------------------------------------------------------------------ one step
    def sigma(self, t: int, t_prev: int) -> float:
        """Std of the fresh noise of the step t -> t_prev (eq. 16): zero for eta = 0 or t_prev = -1."""
        abar_t = self.schedule.alpha_cumprod(t)
        abar_prev = self.schedule.alpha_cumprod(t_prev)
        variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
        return self.eta * math.sqrt(max(variance, 0.0))

    def needs_noise(self, t: int, t_prev: int) -> bool:
        return self.sigma(t, t_prev) > 0.0

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        t_prev: int,
        z_t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z_{t_prev} from z_t and the network output at (z_t, t); same dtype as ``z_t``.

        ``noise`` (shape of ``z_t``) is required whenever the step is stochastic
        (``eta > 0`` and ``t_prev >= 0``); a caller sampling a whole volume in windows passes one
        noise field for the whole latent so that overlapping windows agree.
        """
        t, t_prev = int(t), int(t_prev)
        if not t_prev < t:
            raise ValueError(f"t_prev ({t_prev}) must be smaller than t ({t})")
        x0, eps = self.schedule.predict_x0_eps(model_output, z_t, t)
        if self.clip_x0 is not None:
            abar_t = self.schedule.alpha_cumprod(t)
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = (z_t - math.sqrt(abar_t) * x0) / math.sqrt(1.0 - abar_t)
        abar_prev = self.schedule.alpha_cumprod(t_prev)
        sigma = self.sigma(t, t_prev)
        direction = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0))
        z_prev = math.sqrt(abar_prev) * x0 + direction * eps
        if sigma > 0.0:
            if noise is None:
                raise ValueError(f"eta = {self.eta} > 0: step {t} -> {t_prev} needs a noise tensor")
            z_prev = z_prev + sigma * noise.to(z_prev.dtype)
        return z_prev.to(z_t.dtype)

    # ------------------------------------------------------------------ the loop
    @torch.no_grad()
    def sample(
        self,
        denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        z_T: torch.Tensor,
        generator: torch.Generator | None = None,
        strength: float = 1.0,
        progress: bool = False,
    ) -> torch.Tensor:
        """Run the chain and return z0.

        Args:
            denoise_fn: ``denoise_fn(z_t, t)`` -> network output, ``t`` a (B,) long tensor on the
                device of ``z_t`` (close over the condition).
            z_T: latent at the first timestep: pure noise for ``strength = 1``, else
                ``start_from(z_source, strength, noise)``.
            generator: draws the per-step noise when ``eta > 0`` (on the generator's device, then
                moved): the same seed gives the same sample. Unused for ``eta = 0``.
            strength: fraction of the steps to run (the last ones).
            progress: show a tqdm bar.
        """
        pairs = self.timestep_pairs(strength)
        if progress:
            from tqdm.auto import tqdm

            pairs = tqdm(pairs, desc="DDIM", leave=False)
        z = z_T
        for t, t_prev in pairs:
            t_batch = torch.full((z.shape[0],), t, dtype=torch.long, device=z.device)
            model_output = denoise_fn(z, t_batch)
            noise = None
            if self.needs_noise(t, t_prev):
                draw_device = generator.device if generator is not None else z.device
                noise = torch.randn(z.shape, generator=generator, device=draw_device, dtype=z.dtype).to(z.device)
            z = self.step(model_output, t, t_prev, z, noise)
        return z

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_inference_steps={self.num_inference_steps}, eta={self.eta}, "
            f"clip_x0={self.clip_x0}, spacing={self.spacing!r}, max_timestep={self.max_timestep}, "
            f"schedule={self.schedule!r})"
        )
