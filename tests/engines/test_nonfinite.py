"""NaN/Inf in training: stop with one line and the last good checkpoint intact, or skip and count;
never a model file with NaN weights. Injected through a test hook on ``compute_loss``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bundle.engines import NonFiniteError
from bundle.engines.checkpoints import latest_checkpoint, load_checkpoint


class NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient blows up."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison(stage, at_iteration: int, kind: str) -> None:
    """Make ``stage.compute_loss`` return a NaN loss (``kind="loss"``) or a finite loss with NaN
    gradients (``kind="gradient"``) at one global iteration."""
    original = stage.compute_loss

    def compute_loss(batch):
        loss, terms = original(batch)
        if stage.state.iteration == at_iteration:
            loss = loss * float("nan") if kind == "loss" else NaNGradient.apply(loss)
        return loss, terms

    stage.compute_loss = compute_loss


def finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(v).all() for v in module.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_vae_stage_stops_naming_stage_epoch_iteration_and_keeps_the_last_checkpoint(
        make_parser, tiny_overrides, kind, caplog):
    parser = make_parser({**tiny_overrides, "vae_epochs": 2})  # 2 iterations per epoch, a checkpoint each
    stage = parser.get_parsed_content("vae_stage")
    poison(stage, at_iteration=3, kind=kind)
    with pytest.raises(NonFiniteError) as error:
        stage.run()
    message = str(error.value)
    assert message.startswith(f"VAE stage: non-finite {kind}") and "epoch 2, iteration 3" in message
    assert "\n" not in message
    assert any(r.levelname == "ERROR" and "epoch 2, iteration 3" in r.getMessage() for r in caplog.records)
    newest = latest_checkpoint(stage.ckpt_dir, "vae")
    assert newest is not None and newest.name == "vae_checkpoint_2.pt" and str(newest) in message
    checkpoint = load_checkpoint(newest)  # complete and finite: the last good state
    assert checkpoint["trainer"]["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["vae"].values() if v.is_floating_point())
    assert not stage.final_path.exists()

    # the fault gone, re-running resumes from that checkpoint and finishes
    resumed = make_parser({**tiny_overrides, "vae_epochs": 2}).get_parsed_content("vae_stage")
    resumed.run()
    assert resumed.state.iteration == 4 and resumed.final_path.is_file() and finite(resumed.vae)


def test_skip_drops_the_step_and_counts_it(make_parser, tiny_overrides):
    parser = make_parser({**tiny_overrides, "vae_epochs": 2, "nonfinite": "skip"})
    stage = parser.get_parsed_content("vae_stage")
    poison(stage, at_iteration=2, kind="gradient")
    stage.run()
    assert stage.state.iteration == 4 and stage.state.nonfinite_skips == 1
    assert finite(stage.vae)


def test_diffusion_phase_stops_and_the_model_file_is_never_written(make_parser, tiny_overrides):
    parser = make_parser({**tiny_overrides, "val_interval": 100})
    parser.get_parsed_content("vae_stage").run()
    trainer = parser.get_parsed_content("diffusion_trainer")
    poison(trainer, at_iteration=3, kind="gradient")  # epoch 2: phase 2
    with pytest.raises(NonFiniteError, match=r"^diffusion phase 2: non-finite gradient at epoch 2, iteration 3"):
        trainer.run()
    assert not Path(tiny_overrides["model_path"]).exists()


def test_export_refuses_nan_weights(make_parser, tiny_overrides):
    parser = make_parser(tiny_overrides)
    trainer = parser.get_parsed_content("diffusion_trainer")
    trainer.training_state.scale_factor = 1.0
    with torch.no_grad():
        next(trainer.vae.parameters()).view(-1)[0] = float("nan")  # exported as is (the U-Net: its EMA)
    with pytest.raises(NonFiniteError, match="refusing to write .*model.pt: non-finite values in 1 tensors"):
        trainer.export(tiny_overrides["model_path"], parser.get_parsed_content("hu_windows"))
    assert not Path(tiny_overrides["model_path"]).exists()


def test_unknown_policy_is_named(make_parser, tiny_overrides):
    with pytest.raises(Exception) as error:
        make_parser({**tiny_overrides, "nonfinite": "ignore"}).get_parsed_content("vae_stage")
    assert "nonfinite = 'ignore'" in str(error.value.__cause__ or error.value)
