"""What both training stages share: precision, accumulation, clipping, checkpoints, resume."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from ignite.engine import Events
from monai.engines import Trainer

from bundle.engines.checkpoints import latest_checkpoint, load_checkpoint, make_checkpoint_handler
from bundle.engines.reproducible import ResumableSampler

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

logger = logging.getLogger(__name__)


def autocast(device: torch.device, precision: str):
    """Autocast for ``"bf16"`` (CPU or GPU) and ``"fp16"`` (GPU only); a no-op for ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}.")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA device (use 'bf16' on CPU).")
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


class RecipeTrainer(Trainer):
    """A MONAI ``Trainer`` with the optimisation and checkpoint logic of this recipe.

    Subclasses implement :meth:`compute_loss` and :meth:`checkpoint_objects`. The iteration does
    gradient accumulation (``grad_accum_steps``; the optimizer steps when the global iteration is a
    multiple of it), gradient-norm clipping, bf16/fp16 autocast (fp16 with a gradient scaler) and
    records every loss term in ``engine.state.output``.

    Checkpoints go to ``ckpt_dir`` every ``save_every`` iterations and at each epoch end; calling
    :meth:`run` again resumes from the newest one. ``save_every`` should be a multiple of
    ``grad_accum_steps`` so that no half-accumulated gradient is lost on resume.
    """

    checkpoint_prefix = "train"

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        data_loader,
        optimizer: torch.optim.Optimizer,
        ckpt_dir: str | Path,
        precision: str = "fp32",
        grad_clip: float | None = 1.0,
        grad_accum_steps: int = 1,
        save_every: int = 100,
        seed: int = 0,
        handlers=None,
        epoch_length: int | None = None,
    ) -> None:
        super().__init__(
            device=torch.device(device),
            max_epochs=max_epochs,
            data_loader=data_loader,
            epoch_length=epoch_length,
            handlers=handlers,
            decollate=False,
        )
        autocast(self.state.device, precision)  # validate early
        self.optimizer = optimizer
        self.ckpt_dir = Path(ckpt_dir)
        self.precision = precision
        self.grad_clip = grad_clip
        self.grad_accum_steps = max(1, int(grad_accum_steps))
        self.save_every = save_every
        self.seed = seed
        self.grad_scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        sampler = getattr(data_loader, "sampler", None)
        if isinstance(sampler, ResumableSampler):
            sampler.bind(lambda: self.state.iteration, lambda: self.state.epoch_length)
        self._checkpoint = None

    # --- subclass API -----------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Return the loss to back-propagate and a dict of float terms to log."""
        raise NotImplementedError

    def checkpoint_objects(self) -> dict:
        """Objects with ``state_dict``/``load_state_dict`` that a resume needs."""
        raise NotImplementedError

    def before_load(self, checkpoint: dict) -> None:
        """Hook to shape objects (e.g. optimizer groups) before their state is loaded."""

    # --- iteration ----------------------------------------------------------------------------
    def _iteration(self, engine, batchdata: dict) -> dict:
        iteration = engine.state.iteration
        with autocast(self.state.device, self.precision):
            loss, terms = self.compute_loss(batchdata)
        scaled = loss / self.grad_accum_steps
        if self.grad_scaler is not None:
            self.grad_scaler.scale(scaled).backward()
        else:
            scaled.backward()
        if iteration % self.grad_accum_steps == 0:
            self.optimizer_step()
        terms = {"loss": float(loss.detach()), **terms}
        terms["lr"] = self.optimizer.param_groups[0]["lr"]
        return terms

    def trainable_parameters(self):
        for group in self.optimizer.param_groups:
            yield from (p for p in group["params"] if p.requires_grad)

    def optimizer_step(self) -> None:
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(self.trainable_parameters()), self.grad_clip)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """Hook (the diffusion stage updates its EMA here)."""

    # --- checkpoints ---------------------------------------------------------------------------
    def _to_save(self) -> dict:
        objects = {"trainer": self, "optimizer": self.optimizer, **self.checkpoint_objects()}
        if self.grad_scaler is not None:
            objects["grad_scaler"] = self.grad_scaler
        return objects

    def attach_checkpointing(self) -> None:
        if self._checkpoint is not None:
            return
        self._checkpoint = make_checkpoint_handler(self._to_save(), self.ckpt_dir, self.checkpoint_prefix)
        event = Events.EPOCH_COMPLETED
        if self.save_every:
            event = event | Events.ITERATION_COMPLETED(every=self.save_every)
        self.add_event_handler(event, self._checkpoint)

    def resume(self) -> bool:
        """Load the newest checkpoint of this stage, if any. Returns whether one was loaded."""
        path = latest_checkpoint(self.ckpt_dir, self.checkpoint_prefix)
        if path is None:
            return False
        checkpoint = load_checkpoint(path, map_location=self.state.device)
        self.before_load(checkpoint)
        from ignite.handlers import Checkpoint

        Checkpoint.load_objects(self._to_save(), checkpoint)
        logger.info("resumed %s at iteration %d from %s", self.checkpoint_prefix, self.state.iteration, path)
        return True

    def on_start(self, resumed: bool) -> None:
        """Hook called after the resume attempt, before training starts."""

    def run(self) -> None:  # type: ignore[override]
        """Train from the newest checkpoint of this stage (or from scratch) to ``max_epochs``."""
        self.attach_checkpointing()
        self.on_start(self.resume())
        total = self.state.max_epochs * (self.state.epoch_length or 0)
        if total and self.state.iteration >= total:
            logger.info("%s already finished (%d iterations)", self.checkpoint_prefix, self.state.iteration)
            return
        super().run()
