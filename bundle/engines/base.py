"""What both training stages share: precision, accumulation, clipping, checkpoints, resume."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import torch
from ignite.engine import Events
from monai.engines import Trainer

from bundle.engines import distributed
from bundle.engines.checkpoints import latest_checkpoint, load_checkpoint, make_checkpoint_handler
from bundle.engines.reproducible import ResumableSampler
from bundle.utils.precision import autocast, resolve_precision

logger = logging.getLogger(__name__)


NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """A NaN or Inf loss or gradient stopped training (``nonfinite: stop``)."""


class RecipeTrainer(Trainer):
    """A MONAI ``Trainer`` with the optimisation and checkpoint logic of this recipe.

    Subclasses implement :meth:`compute_loss` and :meth:`checkpoint_objects`. The iteration does
    gradient accumulation, gradient-norm clipping, bf16/fp16 autocast (fp16 with a gradient
    scaler) and records every loss term in ``engine.state.output``.

    Accumulation: iterations are grouped into windows of ``grad_accum_steps`` consecutive global
    iterations (the last window of the run may be shorter); every loss is divided by its
    window's length and the optimizers step at the window's last iteration, so one step sees the
    mean gradient of the window. :attr:`optimizer_steps` counts the steps (the learning-rate
    schedule follows it). Losses of other optimizers (the discriminator) go through
    :meth:`backward` and :meth:`optimizers` so that they accumulate and scale alike.

    Checkpoints go to ``ckpt_dir`` every ``save_every`` iterations and at each epoch end, but
    only where no accumulated gradient is pending (a checkpoint cannot hold one): a due save
    inside a window moves to the window's end. Calling :meth:`run` again resumes from the
    newest one, bit for bit.

    ``nonfinite``: what a NaN/Inf loss or gradient does. ``"stop"`` (default) raises
    :class:`NonFiniteError`, one line naming the stage, epoch and iteration, before anything is
    saved after it (the newest checkpoint is the last good state; re-running resumes from it).
    ``"skip"`` drops that optimizer step (the window's gradients) and counts it in
    ``state.nonfinite_skips``. With fp16 the gradient scaler already skips overflowing steps.

    ``distributed``: one process of a ``torch.distributed`` group (``configs/multi_gpu_train.yaml``,
    :mod:`bundle.engines.distributed`): what :meth:`trainable_modules` returns trains under
    DistributedDataParallel (no gradient sync inside an accumulation window; the VAE stage refuses
    a discriminator), and only rank 0 writes checkpoints.
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
        distributed: bool = False,
        nonfinite: str = "stop",
    ) -> None:
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite = {nonfinite!r}: allowed {NONFINITE_POLICIES}")
        super().__init__(
            device=torch.device(device),
            max_epochs=max_epochs,
            data_loader=data_loader,
            epoch_length=epoch_length,
            handlers=handlers,
            decollate=False,
        )
        self.optimizer = optimizer
        self.ckpt_dir = Path(ckpt_dir)
        self.precision = resolve_precision(precision, self.state.device)  # "auto" -> what the device runs natively
        self.grad_clip = grad_clip
        self.grad_accum_steps = max(1, int(grad_accum_steps))
        self.save_every = save_every
        self.seed = seed
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self._checkpoint = None
        self.distributed = bool(distributed)
        self._ddp = None
        self.nonfinite = nonfinite
        self.state.nonfinite_skips = 0

    # --- subclass API -----------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Return the loss to back-propagate and a dict of float terms to log."""
        raise NotImplementedError

    def checkpoint_objects(self) -> dict:
        """Objects with ``state_dict``/``load_state_dict`` that a resume needs."""
        raise NotImplementedError

    def before_load(self, checkpoint: dict) -> None:
        """Hook to shape objects (e.g. optimizer groups) before their state is loaded."""

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """What trains now, by name: wrapped in DDP when ``distributed`` (subclasses)."""
        return {}

    def rewrap(self) -> None:
        """(Re)build the DDP wrapper over :meth:`trainable_modules` (when the trainable set changes)."""
        if self.distributed:
            self._ddp = distributed.wrap(self.trainable_modules(), self.compute_loss, self.state.device)

    # --- iteration ----------------------------------------------------------------------------
    @property
    def total_iterations(self) -> int:
        return self.state.max_epochs * (self.state.epoch_length or 0)

    def accumulation_window(self, iteration: int) -> range:
        """The global iterations (1-based) whose gradients one optimizer step combines."""
        start = (iteration - 1) // self.grad_accum_steps * self.grad_accum_steps + 1
        stop = start + self.grad_accum_steps
        if self.total_iterations:
            stop = min(stop, self.total_iterations + 1)
        return range(start, stop)

    def steps_at(self, iteration: int) -> bool:
        """Whether the optimizers step at the end of ``iteration`` (the end of its window)."""
        return iteration == self.accumulation_window(iteration)[-1]

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps taken before the current iteration's window."""
        return (max(self.state.iteration, 1) - 1) // self.grad_accum_steps

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer stepped at the end of a window (subclasses add theirs)."""
        return [self.optimizer]

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` as one share of its window's mean (fp16: through the scaler)."""
        scaled = loss / len(self.accumulation_window(self.state.iteration))
        if self.grad_scaler is not None:
            scaled = self.grad_scaler.scale(scaled)
        scaled.backward()

    def _iteration(self, engine, batchdata: dict) -> dict:
        steps = self.steps_at(engine.state.iteration)
        forward = self.compute_loss if self._ddp is None else self._ddp
        # DDP: gradients are all-reduced in the backward of a window's last iteration only
        sync = nullcontext() if self._ddp is None or steps else self._ddp.no_sync()
        with sync:
            with autocast(self.state.device, self.precision):
                loss, terms = forward(batchdata)
            if self.nonfinite == "stop" and self._ddp is None and not torch.isfinite(loss.detach()).all():
                # (under DDP every rank must run the backward: the step's gradient check decides)
                self.fail_nonfinite(f"loss ({float(loss.detach())})")
            self.backward(loss)
        if steps:
            self.optimizer_step()
        terms = {"loss": float(loss.detach()), **terms}
        terms["lr"] = self.optimizer.param_groups[0]["lr"]
        return terms

    def fail_nonfinite(self, what: str) -> None:
        """Stop with one line naming the stage, epoch and iteration (``nonfinite: stop``)."""
        newest = latest_checkpoint(self.ckpt_dir, self.checkpoint_prefix)
        message = (f"{self.stage_name}: non-finite {what} at epoch {self.state.epoch}, iteration "
                   f"{self.state.iteration}; nothing after it was saved, the newest checkpoint is "
                   f"{newest if newest else 'none (the run starts over)'} (set nonfinite: skip to drop such steps)")
        logger.error(message)
        raise NonFiniteError(message)

    @property
    def stage_name(self) -> str:
        return self.checkpoint_prefix

    def _gradients_finite(self) -> bool:
        """Whether every gradient of every optimizer is finite (after DDP's all-reduce, so every
        rank decides alike; a NaN anywhere in the window survives the accumulation)."""
        grads = [p.grad for optimizer in self.optimizers() for group in optimizer.param_groups
                 for p in group["params"] if p.grad is not None]
        if not grads:
            return True
        return bool(torch.isfinite(torch.stack([g.detach().float().abs().sum() for g in grads])).all())

    def optimizer_step(self) -> None:
        """Unscale (fp16), clip each optimizer's gradient norm, step, zero. A non-finite gradient
        (without fp16's scaler, which skips those steps itself) stops or skips (``nonfinite``)."""
        if self.grad_scaler is None and not self._gradients_finite():
            if self.nonfinite == "stop":
                self.fail_nonfinite("gradient")
            self.state.nonfinite_skips += 1
            logger.warning("%s: non-finite gradient at epoch %d, iteration %d: step skipped (%d so far)",
                           self.stage_name, self.state.epoch, self.state.iteration, self.state.nonfinite_skips)
            for optimizer in self.optimizers():
                optimizer.zero_grad(set_to_none=True)
            return
        for optimizer in self.optimizers():
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(optimizer)
            if self.grad_clip:
                params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            if self.grad_scaler is not None:
                self.grad_scaler.step(optimizer)
            else:
                optimizer.step()
        if self.grad_scaler is not None:
            self.grad_scaler.update()
        for optimizer in self.optimizers():
            optimizer.zero_grad(set_to_none=True)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """Hook (the diffusion stage updates its EMA here)."""

    # --- checkpoints ---------------------------------------------------------------------------
    def _to_save(self) -> dict:
        objects = {"trainer": self, "optimizer": self.optimizer, **self.checkpoint_objects()}
        if self.grad_scaler is not None:
            objects["grad_scaler"] = self.grad_scaler
        return objects

    def _checkpoint_due(self, engine, _event) -> bool:
        """At the end of an accumulation window that holds a ``save_every`` iteration or an epoch
        end. Epoch ends that close a window save at EPOCH_COMPLETED instead (after validation)."""
        iteration = engine.state.iteration
        if not self.steps_at(iteration) or iteration % engine.state.epoch_length == 0:
            return False
        window = self.accumulation_window(iteration)
        return any((self.save_every and i % self.save_every == 0) or i % engine.state.epoch_length == 0
                   for i in window)

    def _epoch_checkpoint_due(self, engine, _event) -> bool:
        return self.steps_at(engine.state.iteration)

    def attach_checkpointing(self) -> None:
        if self._checkpoint is not None:
            return
        # distributed: attached on every rank (ignite's Checkpoint constructor calls idist.sync, a
        # collective: attached on rank 0 alone it deadlocked); its DiskSaver writes on rank 0 only
        self._checkpoint = make_checkpoint_handler(self._to_save(), self.ckpt_dir, self.checkpoint_prefix)
        self.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._checkpoint_due), self._checkpoint)
        self.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._epoch_checkpoint_due), self._checkpoint)

    def resume(self) -> bool:
        """Load the newest checkpoint of this stage, if any. Returns whether one was loaded."""
        path = latest_checkpoint(self.ckpt_dir, self.checkpoint_prefix)
        distributed.same_on_all_ranks(None if path is None else path.name, f"newest {self.checkpoint_prefix} checkpoint")
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
        sampler = getattr(self.data_loader, "sampler", None)
        if isinstance(sampler, ResumableSampler):
            # the stages share one loader: the one that runs drives its order (bound at run time,
            # not at construction, where the last trainer built would win)
            sampler.bind(lambda: self.state.iteration, lambda: self.state.epoch_length)
        if self.distributed and not distributed.is_distributed():
            raise RuntimeError(
                f"{type(self).__name__}: distributed is set but no process group is initialised "
                "(configs/multi_gpu_train.yaml's initialize does it; launch with torchrun)."
            )
        self.on_start(self.resume())
        self.rewrap()
        total = self.state.max_epochs * (self.state.epoch_length or 0)
        if total and self.state.iteration >= total:
            logger.info("%s already finished (%d iterations)", self.checkpoint_prefix, self.state.iteration)
            return
        super().run()
        if self.distributed:
            distributed.check_in_sync(self.trainable_modules())
            self._ddp = None  # its gradient buckets and hooks are not needed after the stage
