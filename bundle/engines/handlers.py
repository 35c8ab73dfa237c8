"""Small training pieces: the learning-rate curve, the EMA of the U-Net, plain resume state."""

from __future__ import annotations

import math

import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.optim.swa_utils import AveragedModel


class GroupLRSchedule:
    """Linear warm-up, then constant or cosine decay, per optimizer step, for every group.

    Each group's learning rate is ``group["base_lr"] * factor(step)``, ``step`` counting optimizer
    steps (not iterations: with gradient accumulation one step takes ``grad_accum_steps``
    iterations, read from the engine). Groups added later (the VAE's at the phase-2 transition)
    follow the same curve at their own base rate, which ``torch.optim.lr_scheduler`` classes
    cannot do (they fix their groups at construction). The factor depends only on the engine's
    iteration, so there is no state to checkpoint.

    Args:
        optimizer: the optimizer whose groups carry ``base_lr`` (set from ``lr`` when missing).
        warmup_steps: linear warm-up from 0 over this many optimizer steps.
        schedule: ``"constant"`` or ``"cosine"`` (towards ``min_factor`` at the end of the run).
        min_factor: cosine floor as a fraction of the base rate.
        total_steps: optimizer steps of the run; default: what the engine will take
            (``max_epochs * epoch_length`` iterations over ``grad_accum_steps``, rounded up).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
        schedule: str = "constant",
        min_factor: float = 0.0,
        total_steps: int | None = None,
    ) -> None:
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"lr schedule must be 'constant' or 'cosine', got {schedule!r}.")
        self.optimizer = optimizer
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.min_factor = min_factor
        self.total_steps = total_steps

    def factor(self, step: int, total_steps: int | None) -> float:
        """Learning-rate factor of optimizer step ``step`` (0-based) of ``total_steps``."""
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant" or not total_steps:
            return 1.0
        span = max(1, total_steps - self.warmup_steps)  # the floor lies one step past the last
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def __call__(self, engine: Engine) -> None:
        accumulate = int(getattr(engine, "grad_accum_steps", 1))
        # ITERATION_STARTED: the iteration is 1-based; a RecipeTrainer counts its steps itself
        step = getattr(engine, "optimizer_steps", (engine.state.iteration - 1) // accumulate)
        total = self.total_steps
        if total is None and engine.state.epoch_length:
            total = -(-engine.state.max_epochs * engine.state.epoch_length // accumulate)
        f = self.factor(step, total)
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * f

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)


def warmup_ema(decay: float):
    """``avg_fn`` for ``AveragedModel``: an EMA whose decay warms up as ``min(decay, (1 + n) /
    (10 + n))`` after ``n`` updates, so a short run (the demo) does not end on weights that are
    mostly the first steps'."""

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return averaged + (current.to(averaged.dtype) - averaged) * (1 - d)

    return average


def make_ema(model: nn.Module, decay: float = 0.999) -> AveragedModel:
    """torch's ``AveragedModel`` as the EMA of ``model`` (validation and export use ``.module``):
    a frozen copy in eval mode; ``update_parameters(model)`` after each optimizer step (the first
    update copies the weights, later ones average with :func:`warmup_ema`)."""
    ema = AveragedModel(model, avg_fn=warmup_ema(decay), use_buffers=True)
    ema.module.requires_grad_(False)
    return ema.eval()


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
