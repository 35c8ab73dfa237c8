"""Small training pieces that MONAI/ignite do not provide in the form this recipe needs."""

from __future__ import annotations

import copy
import math

import torch
from ignite.engine import Engine, Events
from torch import nn


class GroupLRSchedule:
    """Linear warm-up, then constant or cosine decay, applied to every optimizer group.

    Each group's learning rate is ``group["base_lr"] * factor(iteration)``. Groups added later
    (the VAE's groups at the phase-2 transition) follow the same curve at their own base rate,
    which ``torch.optim.lr_scheduler`` classes cannot do (they fix their groups at construction).
    The factor depends only on the engine's iteration, so there is no state to checkpoint.

    Args:
        optimizer: the optimizer whose groups carry ``base_lr`` (set from ``lr`` when missing).
        total_iterations: length of the run (for cosine); ``None`` means constant after warm-up.
        warmup_iterations: linear warm-up from 0.
        schedule: ``"constant"`` or ``"cosine"``.
        min_factor: cosine floor as a fraction of the base rate.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iterations: int | None = None,
        warmup_iterations: int = 0,
        schedule: str = "constant",
        min_factor: float = 0.0,
    ) -> None:
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"lr schedule must be 'constant' or 'cosine', got {schedule!r}.")
        self.optimizer = optimizer
        self.total_iterations = total_iterations
        self.warmup_iterations = warmup_iterations
        self.schedule = schedule
        self.min_factor = min_factor

    def factor(self, iteration: int) -> float:
        if self.warmup_iterations and iteration < self.warmup_iterations:
            return (iteration + 1) / self.warmup_iterations
        if self.schedule == "constant" or not self.total_iterations:
            return 1.0
        span = max(1, self.total_iterations - self.warmup_iterations)
        progress = min(1.0, (iteration - self.warmup_iterations) / span)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def __call__(self, engine: Engine) -> None:
        f = self.factor(engine.state.iteration - 1)  # ITERATION_STARTED: state.iteration is 1-based
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * f

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)


class EMA(nn.Module):
    """Exponential moving average of a network's weights (used for validation and export).

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` so a short run (the demo) does not
    end with weights that are mostly the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        n = int(self.num_updates)
        decay = min(self.decay, (1 + n) / (10 + n))
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach().to(ema_p.dtype), 1 - decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class TrainingState:
    """Plain values the recipe needs on resume, in the checkpoint next to the networks."""

    def __init__(self, phase: int = 1, scale_factor: float | None = None) -> None:
        self.phase = phase
        self.scale_factor = scale_factor

    def state_dict(self) -> dict:
        return {"phase": self.phase, "scale_factor": self.scale_factor}

    def load_state_dict(self, state: dict) -> None:
        self.phase = int(state["phase"])
        self.scale_factor = state["scale_factor"]
