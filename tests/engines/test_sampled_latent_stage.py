"""The optional stage that trains the fidelity path on the U-Net's own sampled latents (StableSR)."""

from __future__ import annotations

import torch


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def trained(make_parser, overrides):
    """The recipe's stages up to and including the path stage, run in order as the run list does."""
    parser = make_parser(overrides)
    parser.get_parsed_content("vae_stage").run()
    trainer = parser.get_parsed_content("diffusion_trainer")
    trainer.run()
    return parser, trainer, parser.get_parsed_content("path_sample_stage")


def test_stage_trains_only_the_path_and_the_export_carries_it(make_parser, tiny_overrides, fidelity_overrides):
    overrides = {**tiny_overrides, **fidelity_overrides, "path_sample_epochs": 2}
    parser, trainer, stage = trained(make_parser, overrides)
    vae = trainer.vae
    before = snapshot(vae)
    unet, ema = snapshot(trainer.unet), snapshot(trainer.ema)
    stage.run()
    assert stage.state.iteration == 4  # 2 training volumes x 2 epochs
    after = snapshot(vae)
    path_keys = [k for k in before if k.startswith("fidelity.") and before[k].is_floating_point()]
    assert path_keys and any(not torch.equal(before[k], after[k]) for k in path_keys)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fidelity."))
    assert all(torch.equal(unet[k], v) for k, v in snapshot(trainer.unet).items())
    assert all(torch.equal(ema[k], v) for k, v in snapshot(trainer.ema).items())

    parser.get_parsed_content("training#4")  # export, after the stage in the run list
    state = torch.load(overrides["model_path"], weights_only=True)
    exported = {k[len("autoencoder."):]: v for k, v in state.items() if k.startswith("autoencoder.fidelity.")}
    assert exported and all(torch.equal(exported[k], after[k]) for k in exported)

    # the same command again: every stage finds its last checkpoint, the path is the trained one
    # (the diffusion checkpoint holds the path before this stage; the stage's own restores it after)
    _, again, again_stage = trained(make_parser, overrides)
    again_stage.run()
    assert again_stage.state.iteration == 4
    assert all(torch.equal(after[k], v) for k, v in snapshot(again.vae).items())


def test_the_sampled_latent_is_the_one_inference_decodes(make_parser, tiny_overrides, fidelity_overrides):
    overrides = {**tiny_overrides, **fidelity_overrides, "path_sample_epochs": 1, "path_sample_steps": 3}
    parser, trainer, stage = trained(make_parser, overrides)
    batch = next(iter(parser.get_parsed_content("train_loader")))
    source, target = batch["source"], batch["target"]
    moments = trainer.vae.encode_moments(target)
    z = stage.latent_for(source, moments, torch.Generator().manual_seed(7))

    enhancer = trainer.build_enhancer(parser.get_parsed_content("hu_windows"))
    condition = trainer.vae.encode_moments(source)[0] * trainer.scale_factor
    reference = enhancer.sample_latent(condition, steps=3, eta=0.0, strength=1.0, seed=7) / trainer.scale_factor
    assert z.shape == condition.shape
    torch.testing.assert_close(z, reference, rtol=1e-4, atol=1e-5)

    # the control decodes the target's own posterior sample (the same draw)
    stage.latent = "target"
    z_target = stage.latent_for(source, moments, torch.Generator().manual_seed(7))
    mean, logvar = moments
    torch.testing.assert_close(z_target, trainer.vae.sample(mean, logvar, eps=torch.randn(
        mean.shape, generator=torch.Generator().manual_seed(7))))


def test_zero_epochs_leave_the_model_as_phase_two_made_it(make_parser, tiny_overrides, fidelity_overrides):
    _, trainer, stage = trained(make_parser, {**tiny_overrides, **fidelity_overrides})
    before = snapshot(trainer.vae)
    stage.run()
    assert stage.state.iteration == 0
    assert all(torch.equal(before[k], v) for k, v in snapshot(trainer.vae).items())
