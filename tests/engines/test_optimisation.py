"""Optimisation mechanics of RecipeTrainer: accumulation, the learning-rate curve, checkpoints
between accumulation steps, the discriminator's step, the EMA, the shared sampler."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn
from torch.utils.data import DataLoader

from bundle.engines import GroupLRSchedule, make_ema
from bundle.engines.base import RecipeTrainer
from bundle.engines.reproducible import ResumableSampler, SeededDataset


class ToyTrainer(RecipeTrainer):
    """A linear regression through the recipe's iteration: gradients are easy to reason about."""

    checkpoint_prefix = "toy"

    def __init__(self, model: nn.Module, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model = model

    def compute_loss(self, batch):
        return F.mse_loss(self.model(batch["x"]), batch["y"]), {}

    def checkpoint_objects(self) -> dict:
        return {"model": self.model}


def toy_items(n: int = 5) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(3, generator=g), "y": torch.randn(1, generator=g)} for _ in range(n)]


def toy_trainer(ckpt_dir: Path, batch_size: int, accumulate: int, max_epochs: int = 2, save_every: int = 1,
                items=None, lr: float = 0.1) -> ToyTrainer:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    items = items or toy_items()
    loader = DataLoader(
        SeededDataset(items), batch_size=batch_size,
        sampler=ResumableSampler(len(items), batch_size=batch_size, seed=0, shuffle=False),
    )
    return ToyTrainer(
        model, device="cpu", max_epochs=max_epochs, data_loader=loader,
        optimizer=torch.optim.SGD(model.parameters(), lr=lr), ckpt_dir=ckpt_dir, grad_clip=None,
        grad_accum_steps=accumulate, save_every=save_every,
    )


def weights(trainer: ToyTrainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_accumulated_steps_are_big_batch_steps(tmp_path):
    """k iterations of batch 1 make one step with the mean gradient, exactly like one iteration of
    batch k; the last, shorter window of the run (5 items: windows 2, 2, 1) also steps."""
    items = toy_items(4)
    big = toy_trainer(tmp_path / "big", batch_size=2, accumulate=1, items=items, max_epochs=1)
    big.run()
    small = toy_trainer(tmp_path / "small", batch_size=1, accumulate=2, items=items, max_epochs=1)
    small.run()
    torch.testing.assert_close(weights(small), weights(big), rtol=1e-6, atol=1e-7)

    odd = toy_trainer(tmp_path / "odd", batch_size=1, accumulate=2, max_epochs=1)
    steps = []
    odd.optimizer.register_step_post_hook(lambda *_: steps.append(odd.state.iteration))
    odd.run()
    assert steps == [2, 4, 5]


def test_resume_between_accumulation_steps_is_exact(tmp_path):
    """A checkpoint never holds a half-accumulated gradient: a run stopped inside a window
    resumes from the window's start and ends bit-identical to an uninterrupted run."""
    reference = toy_trainer(tmp_path / "reference", batch_size=1, accumulate=2, save_every=1)
    reference.run()
    interrupted = toy_trainer(tmp_path / "interrupted", batch_size=1, accumulate=2, save_every=1)
    interrupted.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate())
    interrupted.run()
    saved = sorted(int(p.stem.rsplit("_", 1)[1]) for p in (tmp_path / "interrupted").glob("toy_checkpoint_*.pt"))
    assert saved == [2]  # iteration 1 and 3 hold pending gradients: not saved
    resumed = toy_trainer(tmp_path / "interrupted", batch_size=1, accumulate=2, save_every=1)
    resumed.run()
    assert resumed.state.iteration == reference.state.iteration == 10
    assert torch.equal(weights(resumed), weights(reference))


def test_cosine_lr_follows_optimizer_steps_with_accumulation(make_parser, tiny_overrides):
    """The recipe's cosine schedule spans the whole run with grad_accum_steps = 2: the learning
    rate of each optimizer step is the cosine of that step (it used to reach 0 halfway, when the
    schedule counted iterations against a total of optimizer steps)."""
    overrides = {**tiny_overrides, "grad_accum_steps": 2, "lr_schedule": "cosine", "samples_per_volume": 2,
                 "save_every": 2, "val_interval": 100, "lr": 1e-3}
    parser = make_parser(overrides)
    parser.get_parsed_content("vae_stage").run()
    trainer = parser.get_parsed_content("diffusion_trainer")
    lrs = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        if engine.steps_at(engine.state.iteration):
            lrs[engine.state.iteration] = engine.optimizer.param_groups[0]["lr"]

    trainer.run()
    assert sorted(lrs) == [2, 4, 6, 8]  # 2 volumes x 2 crops x 2 epochs, one step per 2 iterations
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * step / 4)) for step in range(4)]
    assert [lrs[i] for i in sorted(lrs)] == pytest.approx(expected, rel=1e-6)


def test_lr_warmup_then_cosine_per_step():
    schedule = GroupLRSchedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), warmup_steps=2,
                               schedule="cosine", min_factor=0.1)
    factors = [schedule.factor(step, 6) for step in range(6)]
    assert factors[:2] == [0.5, 1.0]
    assert factors[2] == pytest.approx(1.0) and factors[-1] > 0.1
    assert all(a > b for a, b in zip(factors[2:], factors[3:]))
    with pytest.raises(ValueError, match="cosine"):
        GroupLRSchedule(schedule.optimizer, schedule="linear")


def test_lr_schedule_reads_accumulation_from_the_engine():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = GroupLRSchedule(optimizer, schedule="cosine")
    engine = Engine(lambda e, b: None)
    engine.grad_accum_steps = 3
    schedule.attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(optimizer.param_groups[0]["lr"]))
    engine.run([0] * 6, max_epochs=1)  # 6 iterations = 2 optimizer steps
    assert seen[:3] == [1.0] * 3 and seen[3:] == [pytest.approx(0.5)] * 3


def test_discriminator_steps_with_the_accumulation_window(make_parser, tiny_overrides):
    """The patch discriminator's loss accumulates like the VAE's and steps at the window's end
    (it used to step, unscaled, at every iteration)."""
    overrides = {**tiny_overrides, "grad_accum_steps": 2, "samples_per_volume": 2, "save_every": 2}
    stage = make_parser(overrides, studies=("adversarial",)).get_parsed_content("vae_stage")
    steps = {"vae": 0, "discriminator": 0}
    stage.optimizer.register_step_post_hook(lambda *_: steps.__setitem__("vae", steps["vae"] + 1))
    stage.discriminator_optimizer.register_step_post_hook(
        lambda *_: steps.__setitem__("discriminator", steps["discriminator"] + 1))
    stage.run()
    assert stage.state.iteration == 4
    assert steps == {"vae": 2, "discriminator": 2}


def test_ema_warms_up_and_resumes():
    model = nn.Linear(2, 1)
    ema = make_ema(model, decay=0.99)
    assert not any(p.requires_grad for p in ema.module.parameters())
    values = []
    for step in range(4):
        with torch.no_grad():
            model.weight.fill_(float(step + 1))
        ema.update_parameters(model)
        values.append(float(ema.module.weight[0, 0]))
    expected = [1.0]  # the first update copies
    for n, target in zip(range(1, 4), (2.0, 3.0, 4.0)):
        d = min(0.99, (1 + n) / (10 + n))
        expected.append(expected[-1] + (target - expected[-1]) * (1 - d))
    assert values == pytest.approx(expected)
    restored = make_ema(nn.Linear(2, 1), decay=0.99)
    restored.load_state_dict(ema.state_dict())
    assert int(restored.n_averaged) == 4 and torch.equal(restored.module.weight, ema.module.weight)


def test_the_running_stage_drives_the_shared_sampler(make_parser, tiny_overrides):
    """The VAE stage and the diffusion trainer share one loader and its resumable sampler: the
    stage that runs sets the data order, whichever was built last (it used to be the last built)."""
    parser = make_parser({**tiny_overrides, "vae_epochs": 2, "val_interval": 100})
    stage = parser.get_parsed_content("vae_stage")
    parser.get_parsed_content("diffusion_trainer")  # built after the stage, sharing its loader
    sampler = stage.data_loader.sampler
    epochs = []
    stage.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append({k[0] for k in iter(sampler)}))
    stage.run()
    assert epochs == [{0}, {1}]
