"""The training recipe through monai.bundle: VAE stage, phase 1, phase 2, checkpoints, model.pt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events

from bundle.inference.low_frequency import TISSUE_LEVELS


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_whole_recipe_phases_and_model_file(make_parser, tiny_overrides, recipe_variant):
    variant, variant_overrides = recipe_variant
    parser = make_parser({**tiny_overrides, **variant_overrides})
    vae_stage = parser.get_parsed_content("vae_stage")
    trainer = parser.get_parsed_content("diffusion_trainer")
    fidelity = trainer.vae.fidelity
    assert (fidelity is not None) == (variant == "fidelity")
    vae_stage.run()
    assert vae_stage.final_path.is_file()
    scale = vae_stage.scale_factor
    assert scale > 0
    if fidelity is not None:  # VAE pre-training opened the zero-initialised gates
        assert all(torch.count_nonzero(skip.gate.weight) > 0 for skip in fidelity.skips)

    before = snapshot(trainer.vae)
    seen = {}

    @trainer.on(Events.EPOCH_COMPLETED(once=1))
    def after_phase1(engine):
        seen["after_phase1"] = snapshot(engine.vae)
        seen["groups_phase1"] = [g["name"] for g in engine.optimizer.param_groups]

    trainer.run()
    # phase 1: the VAE is bit-identical and not in the optimizer
    assert seen["groups_phase1"] == ["unet"]
    assert all(torch.equal(before[k], seen["after_phase1"][k]) for k in before)
    # phase 2: the VAE changed; groups at lr, 0.1 lr, 0.1 lr
    after = snapshot(trainer.vae)
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    if fidelity is not None:  # the path trains with the decoder, in its group
        decoder_group = next(g for g in trainer.optimizer.param_groups if g["name"] == "decoder")
        assert {id(p) for p in fidelity.parameters()} <= {id(p) for p in decoder_group["params"]}
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("fidelity."))
    lr = tiny_overrides.get("lr", 1e-4)
    base = {g["name"]: g["base_lr"] for g in trainer.optimizer.param_groups}
    assert base == pytest.approx({"unet": lr, "encoder": 0.1 * lr, "decoder": 0.1 * lr})
    assert trainer.phase == 2 and trainer.scale_factor == scale

    # export through the config's own run list step and read back with weights_only
    parser.get_parsed_content("training#4")
    state = torch.load(tiny_overrides["model_path"], weights_only=True)
    extra = state["_extra_state"]
    assert extra["hu_windows"] == [[-1024, 3072], [-160, 240], [-1000, 200]]
    assert extra["schedule"]["prediction_type"] == "v_prediction"
    assert float(state["scale_factor"]) == pytest.approx(scale)
    # the U-Net window of inference is the training slab's latent (8 x 64 x 64 / 8 in-plane)
    assert extra["geometry"]["latent_window"] == [8, 8, 8]
    assert extra["geometry"]["image_tile"] == [8, 64, 64]
    if variant == "fidelity":
        assert extra["autoencoder"]["fidelity_channels"] == [8, 16, 16]
        assert extra["output"] == {"fidelity_weight": 0.8, "residual": True, "source_lowpass_sigma": 1.0,
                                   "source_lowpass_levels": TISSUE_LEVELS, "source_lowpass_min_support": 0.25,
                                   "source_lowpass_sigma_z": 3.0}
    else:
        assert "fidelity_channels" not in extra["autoencoder"]
        assert extra["output"] == {"fidelity_weight": 1.0, "residual": False, "source_lowpass_sigma": 0.0,
                                   "source_lowpass_levels": (), "source_lowpass_min_support": 0.25,
                                   "source_lowpass_sigma_z": 0.0}

    from bundle.inference import CTEnhancer

    enhancer = CTEnhancer.from_file(tiny_overrides["model_path"], num_inference_steps=2)
    source = torch.full((1, 8, 64, 64), -1000.0)
    source[:, :, 16:48, 16:48] = 40.0
    out = enhancer(source)
    assert out.shape == source.shape and torch.isfinite(out).all()
    # EMA weights, not the raw U-Net, are exported
    ema = trainer.ema.module.state_dict()
    assert all(torch.equal(enhancer.unet.state_dict()[k], ema[k]) for k in ema)


def test_resume_matches_uninterrupted_run(make_parser, tiny_overrides, recipe_variant, tmp_path):
    # validation does not touch training state
    overrides = {**tiny_overrides, **recipe_variant[1], "val_interval": 100}

    def run(output_dir, stop_at=None):
        parser = make_parser({**overrides, "output_dir": str(output_dir)})
        parser.get_parsed_content("vae_stage").run()
        trainer = parser.get_parsed_content("diffusion_trainer")
        if stop_at is not None:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
        trainer.run()
        return trainer

    reference = run(tmp_path / "uninterrupted")
    total = reference.state.iteration
    assert total == 4  # 2 training volumes x 2 epochs

    interrupted = run(tmp_path / "interrupted", stop_at=3)  # mid-epoch, in phase 2
    assert interrupted.state.iteration == 3
    resumed_seen = {}
    parser = make_parser({**overrides, "output_dir": str(tmp_path / "interrupted")})
    parser.get_parsed_content("vae_stage").run()  # finds vae_final.pt: skipped
    resumed = parser.get_parsed_content("diffusion_trainer")

    @resumed.on(Events.STARTED)
    def where(engine):
        resumed_seen["start"] = engine.state.iteration

    resumed.run()
    assert resumed_seen["start"] == 3  # not from zero
    assert resumed.state.iteration == total
    for name in ("unet", "vae"):
        ref, res = snapshot(getattr(reference, name)), snapshot(getattr(resumed, name))
        assert all(torch.equal(ref[k], res[k]) for k in ref), f"{name} differs after resume"
    assert all(torch.equal(a, b) for a, b in zip(reference.ema.state_dict().values(), resumed.ema.state_dict().values()))


def test_phase2_keeps_latent_spread_and_reconstruction(make_parser, tiny_overrides):
    """Joint training must not collapse the latent: spread and reconstruction stay in bounds."""
    overrides = {**tiny_overrides, "vae_epochs": 3, "num_epochs": 4, "phase1_epochs": 1, "val_interval": 100}
    parser = make_parser(overrides)
    vae_stage = parser.get_parsed_content("vae_stage")
    vae_stage.run()
    trainer = parser.get_parsed_content("diffusion_trainer")
    batch = next(iter(parser.get_parsed_content("val_loader")))
    windows = parser.get_parsed_content("hu_windows")

    def measure():
        enhancer = trainer.build_enhancer(windows)
        target = batch["target"]
        with torch.no_grad():
            latent = enhancer.encode(enhancer.windows.to_channels(target))
            l1 = (enhancer.reconstruct(target) - target).abs().mean()
        return float(latent.std()), float(l1)

    trainer.training_state.scale_factor = vae_stage.scale_factor  # what run() sets first
    spread_before, l1_before = measure()
    trainer.run()
    assert trainer.phase == 2
    spread_after, l1_after = measure()
    assert 0.5 < spread_after / spread_before < 2.0, (spread_before, spread_after)
    assert l1_after < 1.25 * l1_before + 5.0, (l1_before, l1_after)  # HU


def test_vae_stage_with_adversarial_term_runs_on_slabs(make_parser, tiny_overrides):
    """The patch discriminator must fit an 8-slice slab (MONAI's default kernel 4 did not)."""
    parser = make_parser({**tiny_overrides, "adversarial_weight": 0.1}, studies=("adversarial",))
    stage = parser.get_parsed_content("vae_stage")
    stage.run()
    assert stage.final_path.is_file()
    assert {"adv_generator", "adv_discriminator"} <= set(stage.state.output)


def test_validation_shows_the_supervised_cnn_row_when_trained(make_parser, tiny_overrides, tmp_path):
    """Training's validation scores the RED-CNN baseline beside identity, the ceiling and the model
    when its model file exists (and leaves it out, saying why, when it does not)."""
    from bundle.evaluation.redcnn import RedCNN3D, RedCNNEnhancer, load_redcnn
    from bundle.metrics import volume_metrics

    torch.manual_seed(0)
    redcnn_path = tmp_path / "redcnn.pt"
    windows = [[-1024, 3072], [-160, 240], [-1000, 200]]
    RedCNNEnhancer(RedCNN3D(in_channels=3, channels=4), windows).save(redcnn_path)
    for path, expect_row in ((tmp_path / "missing.pt", False), (redcnn_path, True)):
        parser = make_parser({**tiny_overrides, "redcnn_path": str(path)})
        trainer = parser.get_parsed_content("diffusion_trainer")
        validator = parser.get_parsed_content("validator")
        trainer.training_state.scale_factor = 1.0  # untrained networks do: the rows are what is checked
        validator.trainer = trainer
        validator.run()
        metrics = validator.state.metrics
        rows = {k.split("/")[0] for k in metrics}
        # (the recipe's fidelity path adds a "ceiling" row: the target's latent through the path)
        assert rows - {"ceiling"} == {"identity", "vae_ceiling", "model"} | ({"redcnn"} if expect_row else set())
    # the row is the baseline's own output scored against the target
    pair = next(iter(parser.get_parsed_content("val_loader")))
    expected = volume_metrics(load_redcnn(redcnn_path)(pair["source"])[0], pair["target"][0], (-160, 240))
    assert metrics["redcnn/[-160,240]/psnr"] == pytest.approx(expected["psnr"], rel=1e-5)


def test_path_channel_weights_change_only_the_paths_term(make_parser, tiny_overrides):
    """configs/studies/path_hu_channel_weights.yaml weighs the path's reconstruction term alone:
    the VAE's own terms (the spec's L1) are untouched."""
    # against the path on the VAE's own L1 + gradient (the demo's; train.yaml's own is the squared error)
    overrides = {**tiny_overrides, "fidelity_channels": [8, 16, 16], "train_fidelity_on": "@reconstruction_loss"}
    results = []
    for studies in ((), ("path_hu_channel_weights",)):
        parser = make_parser(overrides, studies=studies)
        stage = parser.get_parsed_content("vae_stage")
        with torch.no_grad():  # open the zero-initialised gates so that the path matters
            for skip in stage.vae.fidelity.skips:
                skip.gate.weight.normal_(0, 0.1)
        batch = next(iter(parser.get_parsed_content("train_loader")))
        with torch.no_grad():
            results.append(stage.compute_loss(batch)[1])
    plain, weighted = results
    assert weighted["l1"] == pytest.approx(plain["l1"], rel=1e-6)
    assert weighted["fidelity_l1"] != pytest.approx(plain["fidelity_l1"], rel=1e-3)


def test_validation_scores_the_scans_own_voxels_like_the_evaluation(make_parser, tiny_overrides, tiny_dataset, tmp_path):
    """One protocol: training's validation scores a pair exactly as the evaluation does, on the
    scan's own voxels. The pair here (6 slices of 60 x 52) is not a multiple of the VAE factor
    nor a whole slab; padding it with air, as validation used to, raised its PSNR."""
    import json

    import nibabel as nib

    from bundle.evaluation.evaluate import as_pair
    from bundle.metrics import window_metrics

    datalist = json.loads((tiny_dataset / "datalist.json").read_text())
    item = datalist["validation"][0]
    cropped = {"patient": "cropped"}
    for key in ("source", "target"):
        image = nib.load(str(tiny_dataset / item[key]))
        data = np.asarray(image.dataobj, dtype=np.float32)[2:62, 6:58, 1:7]  # (i, j, k) of the file
        cropped[key] = str(tmp_path / f"cropped_{key}.nii.gz")
        nib.save(nib.Nifti1Image(data, image.affine), cropped[key])
    training = [{k: str(tiny_dataset / v) if k != "patient" else v for k, v in e.items()} for e in datalist["training"]]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": training, "validation": [cropped], "test": []}))

    parser = make_parser({**tiny_overrides, "datalist": str(tmp_path / "datalist.json")})
    trainer = parser.get_parsed_content("diffusion_trainer")
    validator = parser.get_parsed_content("validator")
    trainer.training_state.scale_factor = 1.0
    validator.trainer = trainer
    validator.run()
    pair = as_pair(parser.get_parsed_content("val_transforms")(cropped))
    assert pair.source.shape == (1, 6, 52, 60)  # SPL: slices, rows (j), columns (i)
    expected = window_metrics(pair.source, pair.target, validator.windows)
    for window, values in expected.items():
        for metric in ("psnr", "ssim", "rmse", "volume_psnr"):
            assert validator.state.metrics[f"identity/{window}/{metric}"] == pytest.approx(values[metric], rel=1e-6)


def test_detached_target_latent_keeps_the_diffusion_loss_off_the_target_path(make_parser, tiny_overrides):
    """detach_target_latent: in phase 2 the diffusion loss reaches the encoder through the
    condition (the source's latent) but not through the target latent it denoises."""
    parser = make_parser({**tiny_overrides, "recon_weight": 0.0, "kl_weight": 0.0})
    trainer = parser.get_parsed_content("diffusion_trainer")
    trainer.training_state.scale_factor = 1.0
    trainer.enter_phase2()
    with torch.no_grad():  # the zero-initialised output layer would pass no gradient at all
        for p in trainer.unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    batch = next(iter(parser.get_parsed_content("train_loader")))
    n = batch["source"].shape[0]
    encode, captured = trainer.vae.encode_moments, {}

    def spy(x):
        captured["mean"], logvar = encode(x)
        return captured["mean"], logvar

    trainer.vae.encode_moments = spy
    grads = {}
    for detach in (False, True):
        trainer.detach_target_latent = detach
        loss, _ = trainer.compute_loss(batch)
        g = torch.autograd.grad(loss, captured["mean"])[0]
        grads[detach] = (float(g[:n].abs().sum()), float(g[n:].abs().sum()))  # (source, target)
    assert grads[False][1] > 0 and grads[True][1] == 0
    assert grads[True][0] > 0  # the condition still carries the diffusion loss to the encoder


def test_lesion_term_trains_the_path_on_the_crops_lesion_maps(make_parser, tiny_overrides):
    """--lesion_insertion with fidelity_loss#lesion: the transform's maps reach the path's loss in
    the VAE stage; the term without insertion says what it needs."""
    overrides = {**tiny_overrides, "fidelity_channels": [8, 16, 16], "train_fidelity_on": "@fidelity_loss",
                 "fidelity_loss#lesion": 100.0}
    parser = make_parser({**overrides, "lesion_insertion": 1.0})
    stage = parser.get_parsed_content("vae_stage")
    batch = next(iter(parser.get_parsed_content("train_loader")))
    assert batch["lesion"].shape[:2] == (batch["target"].shape[0], 1) and batch["lesion"].any()
    with torch.no_grad():
        assert stage.compute_loss(batch)[1]["fidelity_lesion"] > 0
    parser = make_parser(overrides)
    stage = parser.get_parsed_content("vae_stage")
    batch = next(iter(parser.get_parsed_content("train_loader")))
    with pytest.raises(ValueError, match="lesion_insertion > 0"):
        stage.compute_loss(batch)


def test_transfer_term_decodes_the_crop_without_its_lesions(make_parser, tiny_overrides):
    """fidelity_loss#transfer: the VAE stage decodes the crop again without its lesions and prices the
    path's response to them; the gradient reaches the path; without insertion it says what it needs."""
    overrides = {**tiny_overrides, "fidelity_channels": [8, 16, 16], "train_fidelity_on": "@fidelity_loss",
                 "fidelity_loss#transfer": 100.0}
    parser = make_parser({**overrides, "lesion_insertion": 1.0})
    stage = parser.get_parsed_content("vae_stage")
    batch = next(iter(parser.get_parsed_content("train_loader")))
    assert batch["source_plain"].shape == batch["source"].shape and batch["lesion"].any()
    loss, terms = stage.compute_loss(batch)
    assert terms["fidelity_transfer"] > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.vae.fidelity.parameters())
    parser = make_parser(overrides)
    stage = parser.get_parsed_content("vae_stage")
    batch = next(iter(parser.get_parsed_content("train_loader")))
    with pytest.raises(ValueError, match="lesion_insertion > 0"):
        stage.compute_loss(batch)


@pytest.mark.parametrize("warmup", [0, 3])
def test_vae_stage_warms_its_learning_rate_up_when_asked(make_parser, tiny_overrides, warmup):
    """``vae_warmup_steps``: the VAE stage's rate rises linearly to ``vae_lr`` over that many steps
    (0: every step at ``vae_lr``, the recipe as it was)."""
    from ignite.engine import Events

    parser = make_parser({**tiny_overrides, "vae_warmup_steps": warmup, "vae_lr": 1e-3, "vae_epochs": 2})
    stage = parser.get_parsed_content("vae_stage")
    optimizer = parser.get_parsed_content("vae_optimizer")
    rates = []
    stage.add_event_handler(Events.ITERATION_COMPLETED, lambda _: rates.append(optimizer.param_groups[0]["lr"]))
    stage.run()
    assert len(rates) > warmup
    expected = [1e-3 * min(1.0, (k + 1) / warmup) if warmup else 1e-3 for k in range(len(rates))]
    assert rates == pytest.approx(expected)
