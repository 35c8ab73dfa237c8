"""Noise schedule of the latent diffusion model: the forward process and the prediction targets.

A :class:`DiffusionSchedule` knows ``alphas_cumprod`` (abar_t) and nothing of networks or samplers.
Training uses ``sample_timesteps`` / ``add_noise`` / ``training_target``; samplers use
``predict_x0_eps`` (and the coefficient table). Conventions:

- ``t`` is an integer timestep in ``[0, T)``; ``z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps``.
- Tensors are ``(B, ...)`` with any trailing dims (latents are ``(B, C, S, h, w)``); ``t`` is a
  ``(B,)`` long tensor or a python int (one timestep for the whole batch).
- Coefficients are computed in float64 and cast to the dtype of the data before the elementwise
  arithmetic, so memory and speed follow the data dtype (float64 data -> float64 throughout).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.networks.schedulers import NoiseSchedules

from bundle.utils.plain import plain
from bundle.utils.validation import SettingError, check_choice, check_steps

__all__ = ["DiffusionSchedule", "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class DiffusionSchedule:
    """Discrete variance-preserving noise schedule with ``T`` training timesteps.

    Betas come from MONAI's registry, ``monai.networks.schedulers.NoiseSchedules[schedule]``
    (``linear_beta``, ``scaled_linear_beta``, ``sigmoid_beta``, ``cosine``, or one added with
    ``NoiseSchedules.add_def``), so a network trained with MONAI's schedulers sees the same betas.
    ``alphas_cumprod`` is the float64 cumulative product of ``1 - betas``.

    MONAI's ``cosine`` computes in float32 and clips betas at 0.999; with T = 1000 only the last
    beta is clipped (its unclipped value is 1), so ``alphas_cumprod[999] = 0.001 * alphas_cumprod[998]``
    ~ 2.4e-9 instead of ~0. The float32 betas agree with the closed form to about 1e-5 relative.

    Args:
        num_train_timesteps: number of training timesteps ``T``.
        schedule: name of a MONAI noise schedule.
        prediction_type: what the network predicts: ``"v_prediction"`` (default; v = sqrt(abar) eps
            - sqrt(1 - abar) z0, well conditioned at every t), ``"epsilon"`` (the noise; its x0
            estimate divides by sqrt(abar_t), about 2e4x error gain at t = 999 of the cosine
            schedule: see ``DDIMSampler``'s ``max_timestep``/``clip_x0``) or ``"sample"`` (z0).
        schedule_args: keyword arguments of the schedule function (``cosine`` takes only ``s``).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "cosine",
        prediction_type: str = "v_prediction",
        schedule_args: dict[str, Any] | None = None,
    ) -> None:
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_steps("num_train_timesteps", num_train_timesteps)
        if schedule not in NoiseSchedules.names:
            raise SettingError("schedule", schedule, "a MONAI noise schedule: " + ", ".join(NoiseSchedules.names))
        self.num_train_timesteps = int(num_train_timesteps)
        self.schedule = str(schedule)
        self.prediction_type = prediction_type
        self.schedule_args = dict(schedule_args or {})

        out = NoiseSchedules[self.schedule](self.num_train_timesteps, **self.schedule_args)
        betas = out[0] if isinstance(out, tuple) else out  # some schedules return (betas, alphas, abar)
        self.betas = torch.as_tensor(betas).detach().to(device="cpu", dtype=torch.float64)
        if self.betas.shape != (self.num_train_timesteps,):
            raise ValueError(f"schedule {schedule!r} returned betas of shape {tuple(self.betas.shape)}")
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise ValueError(f"schedule {schedule!r} returned betas outside (0, 1)")
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ coefficients
    def alpha_cumprod(self, t: int) -> float:
        """abar_t as a python float (float64); ``t = -1`` means the clean end of the chain (1.0)."""
        t = int(t)
        if t == -1:
            return 1.0
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"timestep {t} outside [-1, {self.num_train_timesteps})")
        return float(self.alphas_cumprod[t])

    def _table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(abar), sqrt(1 - abar) on ``device``, float64 (float32 where float64 is unsupported)."""
        device = torch.device(device)
        if device not in self._tables:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            sqrt_abar = self.alphas_cumprod.sqrt()
            sqrt_one_minus = (1.0 - self.alphas_cumprod).sqrt()
            self._tables[device] = (sqrt_abar.to(device, dtype), sqrt_one_minus.to(device, dtype))
        return self._tables[device]

    def _coefficients(self, t: torch.Tensor | int, like: torch.Tensor) -> tuple[torch.Tensor | float, ...]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) shaped to broadcast over ``like`` and cast to its dtype."""
        if isinstance(t, int) or (torch.is_tensor(t) and t.ndim == 0):
            abar = self.alpha_cumprod(int(t))
            return math.sqrt(abar), math.sqrt(1.0 - abar)
        t = t.to(device=like.device, dtype=torch.long)
        if t.ndim != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(f"t must be an int or a (B,) tensor with B = {like.shape[0]}, got shape {tuple(t.shape)}")
        if bool(((t < 0) | (t >= self.num_train_timesteps)).any()):
            raise ValueError(f"timesteps outside [0, {self.num_train_timesteps})")
        shape = (-1,) + (1,) * (like.ndim - 1)
        sqrt_abar, sqrt_one_minus = self._table(like.device)
        return (
            sqrt_abar[t].to(like.dtype).reshape(shape),
            sqrt_one_minus[t].to(like.dtype).reshape(shape),
        )

    # ------------------------------------------------------------------ forward process
    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) noise, in the dtype of ``z0``."""
        a, s = self._coefficients(t, z0)
        return a * z0 + s * noise.to(z0.dtype)

    def training_target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """What the network must output at ``z_t = add_noise(z0, noise, t)``."""
        if self.prediction_type == "epsilon":
            return noise.to(z0.dtype)
        if self.prediction_type == "sample":
            return z0
        a, s = self._coefficients(t, z0)
        return a * noise.to(z0.dtype) - s * z0

    def predict_x0_eps(
        self, model_output: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Invert ``training_target``: (x0_hat, eps_hat) from the network output at ``z_t``."""
        a, s = self._coefficients(t, z_t)
        model_output = model_output.to(z_t.dtype)
        if self.prediction_type == "epsilon":
            return (z_t - s * model_output) / a, model_output
        if self.prediction_type == "sample":
            return model_output, (z_t - a * model_output) / s
        # v = a eps - s x0 and z = a x0 + s eps, with a^2 + s^2 = 1
        return a * z_t - s * model_output, s * z_t + a * model_output

    def sample_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """(batch,) long timesteps drawn uniformly from ``[0, T)``; drawn on the generator's device."""
        draw_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=draw_device)
        return t.to(device) if device is not None else t

    # ------------------------------------------------------------------ persistence
    def to_config(self) -> dict[str, Any]:
        """Constructor arguments as plain python types (safe for ``torch.load(weights_only=True)``)."""
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "schedule": self.schedule,
            "prediction_type": self.prediction_type,
            "schedule_args": {k: plain(v) for k, v in self.schedule_args.items()},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DiffusionSchedule:
        """Rebuild from ``to_config()`` or ``state_dict()`` (the latter is checked, see ``load_state_dict``)."""
        schedule = cls(**{k: v for k, v in config.items() if k != "alphas_cumprod"})
        if "alphas_cumprod" in config:
            schedule._check_alphas_cumprod(config["alphas_cumprod"])
        return schedule

    def state_dict(self) -> dict[str, Any]:
        """Config plus the abar table as a list of floats, so a checkpoint records the exact schedule
        it was trained with (and ``load_state_dict`` notices if another MONAI builds it differently).
        Having ``state_dict``/``load_state_dict`` lets ignite's ``Checkpoint`` save the schedule."""
        return {**self.to_config(), "alphas_cumprod": self.alphas_cumprod.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Re-initialise in place from ``state_dict()``; raises if the rebuilt table differs."""
        other = type(self).from_config(state)
        self.__dict__.update(other.__dict__)

    def _check_alphas_cumprod(self, stored: Any) -> None:
        stored = torch.as_tensor(stored, dtype=torch.float64)
        if stored.shape != self.alphas_cumprod.shape or not torch.allclose(
            stored, self.alphas_cumprod, rtol=1e-6, atol=1e-12
        ):
            raise ValueError(
                "the stored alphas_cumprod differ from the ones this MONAI version builds for "
                f"{self.to_config()}: the network was trained with another schedule"
            )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items())
        return f"{type(self).__name__}({args})"

