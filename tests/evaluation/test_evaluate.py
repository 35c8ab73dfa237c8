"""The evaluation run end to end on a tiny random model and generated data, and its rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from bundle.evaluation.baselines import GaussianFilter, NonLocalMeans
from bundle.evaluation.evaluate import Evaluation, as_pair, panel_slice, sweep_datasets
from bundle.evaluation.methods import DiffusionSampling, Identity, Method, ModelCeiling, diffusion_methods
from bundle.metrics import METRIC_WINDOWS, PSNR_CAP, estimate_noise_sigma, flat_region_mask, volume_metrics, window_name
from bundle.evaluation.redcnn import RedCNN3D, RedCNNEnhancer, RedCNNMethod, load_redcnn
from bundle.inference import CTEnhancer
from bundle.inference.enhancer import Enhancement
from bundle.networks import ConditionalUNet3D, VideoVAE

REPO = Path(__file__).resolve().parents[2]
SOFT = window_name((-160, 240))






@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    enhancer = CTEnhancer(
        VideoVAE(channels=(8, 16, 16, 16), norm_num_groups=4, num_res_blocks=1),
        ConditionalUNet3D(
            model_channels=16, channel_mult=(1, 2, 2, 2), num_heads=2, norm_num_groups=4, time_embed_dim=32,
            num_res_blocks=1,
        ),
        latent_window=(8, 8, 8), latent_overlap=(4, 4, 4), image_tile=(8, 64, 64), image_overlap=(4, 16, 16),
    )
    path = tmp_path_factory.mktemp("model") / "model.pt"
    enhancer.save(path)
    return path


def test_pairs(tiny_dataset, split="test"):
    """The test pairs as the evaluation sees them (configs/evaluate.yaml's dataset)."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "evaluate.yaml"))
    parser.update({"datalist": str(tiny_dataset / "datalist.json")})
    dataset = parser.get_parsed_content(f"{split}_dataset")
    return [as_pair(dataset[i], i) for i in range(len(dataset))]


test_pairs.__test__ = False  # a helper, not a test


def volume_scores(run: Path, row: str, patient: str) -> dict:
    """One test volume's scores of one row, by window (evaluation.json)."""
    return json.loads((run / "evaluation.json").read_text())["methods"][row]["per_volume"][patient]


@pytest.fixture(scope="module")
def evaluation_run(tiny_dataset, tiny_model, tmp_path_factory):
    """``ctv2v evaluate`` on the tiny model; the RED-CNN baseline is trained first by the config."""
    from bundle.cli import main

    out = tmp_path_factory.mktemp("evaluation")
    redcnn = out / "redcnn.pt"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main([
            "evaluate", "--datalist", str(tiny_dataset / "datalist.json"), "--model", str(tiny_model),
            "--output", str(out), "--redcnn", str(redcnn), "--train-redcnn",
            "--set", "device=cpu", "--set", "sampling_steps=[2,1]", "--set", "partial_strength_steps=2",
            "--set", "ensemble_samples=2", "--set", "ensemble_steps=1", "--set", "train_patch_size=[8,64,64]",
            "--set", "redcnn_overrides#redcnn_epochs=1", "--set", "redcnn_overrides#redcnn_channels=4",
            "--set", "redcnn_overrides#samples_per_volume=1", "--set", "redcnn_overrides#batch_size=1",
            "--set", "redcnn_overrides#cache=none", "--set", "redcnn_overrides#num_workers=0",
            # not the checkout's models/redcnn_2d.pt, if a developer trained one: the row stays "not trained"
            "--set", f"redcnn_2d_path={out / 'redcnn_2d.pt'}",
        ])
    finally:
        torch.set_num_threads(previous)
    assert code == 0
    return out


def test_outputs_of_the_run(evaluation_run):
    out = evaluation_run
    metrics = json.loads((out / "metrics.json").read_text())
    import importlib.util

    bm3d = ["bm3d"] if importlib.util.find_spec("bm3d") else []  # an extra: without it, a status row
    rows = ["identity", "full_dose", "vae_ceiling", "no_diffusion", "gaussian", "nlm", *bm3d, "redcnn", "ddim_2",
            "ddim_1", "ddim_2_strength_0.5", "ddim_1_mean_of_2"]
    assert list(metrics) == rows
    for row in rows:
        assert list(metrics[row]) == ["[-1024,3072]", "[-1000,1000]", "[-160,240]"]
        for values in metrics[row].values():
            assert {"psnr", "ssim", "rmse", "volume_psnr", "noise_sigma", "slices", "slices_excluded"} <= set(values)
    full = json.loads((out / "evaluation.json").read_text())
    assert full["methods"]["ceiling"]["status"].startswith("n/a")  # spec model: it IS vae_ceiling
    assert full["methods"]["bm3d"]["status"] == ("ok" if bm3d else full["methods"]["bm3d"]["status"])
    if bm3d:
        assert full["methods"]["bm3d"]["tuning"]["tuned"]
    assert full["methods"]["redcnn_2d"]["status"].startswith("not trained")
    assert full["methods"]["gaussian"]["tuning"]["tuned"] and full["validation_volumes"]
    # which ideal-observer bound checks a row: per-slice methods the one-slice bound, the rest the 3D one
    assert full["methods"]["nlm"]["per_slice"] and not full["methods"]["gaussian"]["per_slice"]
    assert not full["methods"]["redcnn"]["per_slice"] and not full["methods"]["ddim_2"]["per_slice"]
    assert all(full["methods"][r]["seconds_per_volume"] >= 0 for r in rows)

    report = (out / "report.md").read_text()
    for window in ("[-1024,3072]", "[-1000,1000]", "[-160,240]"):
        assert f"## Window {window} HU" in report
    assert "| identity |" in report and "| vae_ceiling |" in report and "s / volume" in report
    assert "ctv2v evaluate" in report  # the command that made it
    for section in ("## Against the clean truth", "## HU accuracy per tissue class", "## QA inserts",
                    "## Noise, texture, resolution, low contrast", "## Dose sweep"):
        assert section in report, section

    physics = json.loads((out / "physics.json").read_text())
    for row in ("identity", "full_dose", "nlm"):
        summary = physics["methods"][row]
        assert {"vs_clean", "hu", "inserts", "noise", "ttf50", "lesion_summary"} <= set(summary), row
        assert set(summary["hu"]) == {"air", "lung", "fat", "soft tissue", "bone"} or {"air", "soft tissue"} <= set(summary["hu"])
    # the input is noisier than full dose, with its texture; smoothing filters lower the noise
    assert physics["methods"]["identity"]["noise"]["sigma_rel"] > 1.2
    assert physics["methods"]["gaussian"]["noise"]["sigma"] < physics["methods"]["identity"]["noise"]["sigma"]
    assert physics["methods"]["gaussian"]["noise"]["nps_mean_frequency_rel"] < physics["methods"]["identity"]["noise"]["nps_mean_frequency_rel"]
    # the full-dose scan keeps the lesions' contrast (up to its noise: the tiny volumes' lesions are a
    # few voxels, 1.6 measured); the report has the column
    assert 0.5 < physics["methods"]["full_dose"]["lesion_summary"]["contrast_kept"] < 2.5
    assert "lesion contrast kept" in report
    assert sorted(physics["sweep"], key=float) == ["0.05", "0.1", "0.25", "0.5"]
    sigma = [physics["sweep"][d]["identity"]["noise"]["sigma"] for d in ("0.5", "0.25", "0.1", "0.05")]
    assert sigma == sorted(sigma)  # lower dose, more noise
    # the ideal observer's d' (a bound for any enhancer of the input) on the linear systems' images only
    ideal = {row: physics["methods"][row]["lesion_summary"].get("d_prime_ideal") for row in physics["methods"]
             if "lesion_summary" in physics["methods"][row]}
    assert {row for row, value in ideal.items() if value is not None} == {"identity", "full_dose"}
    assert 0 < ideal["identity"] < ideal["full_dose"]
    bound = [physics["sweep"][d]["identity"]["lesion_summary"]["d_prime_ideal"] for d in ("0.5", "0.25", "0.1", "0.05")]
    assert bound == sorted(bound, reverse=True)  # lower dose, less any enhancer can recover
    assert "ideal observer" in report and "one input slice" in report and "every slice it crosses" in report
    # what can be asked of any enhancer: per lesion the full-dose index or, where lower, that bound
    attainable = physics["methods"]["full_dose"]["lesion_summary"]["d_prime_attainable"]
    assert 0 < attainable <= physics["methods"]["full_dose"]["lesion_summary"]["d_prime"] + 1e-9
    assert attainable <= physics["methods"]["identity"]["lesion_summary"]["d_prime_ideal_3d"] + 1e-9
    assert "d' / attainable" in report

    from PIL import Image

    panels = sorted((out / "panels").glob("*.png"))
    expected = sorted(f"{v['patient']}{suffix}.png" for v in full["test_volumes"] for suffix in ("", "_nps", "_wide", "_zoom"))
    assert [p.name for p in panels] == expected
    for png in panels + [out / "psnr_vs_steps.png", out / "dose_sweep.png"]:
        with Image.open(png) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    assert not list(out.rglob(".*.tmp*"))  # atomic writes leave no temporary files


def test_the_clean_truth_scores_perfectly_and_a_shift_is_its_bias(tiny_dataset):
    """The physics of one QA volume: an output equal to the clean truth has no HU error anywhere
    and the capped PSNR against it; a shifted truth has the shift as its bias in every class and
    insert; the full-dose scan's TTF50 is finite at the bone inserts."""
    from bundle.evaluation.evaluate import Evaluation

    pair = next(p for p in test_pairs(tiny_dataset) if p.patient == "qa000")
    physics = Evaluation([], [], "unused").volume_physics(pair)
    clean = pair.clean[0].numpy()
    perfect = physics.measure(clean)
    assert all(v["bias"] == 0 and v["rmse"] == 0 for v in perfect["hu"].values())
    assert all(v["bias"] == 0 for v in perfect["inserts"].values())
    assert all(m["psnr"] == PSNR_CAP for m in perfect["vs_clean"].values())
    shifted = physics.measure(clean + 5.0)
    assert all(abs(v["bias"] - 5.0) < 1e-3 for v in shifted["hu"].values())  # float32 truth
    assert all(abs(v["bias"] - 5.0) < 1e-3 for v in shifted["inserts"].values())
    assert set(physics.full_dose["ttf50"]["per_insert"]) == {"air", "fat", "bone 700", "bone 1200"}
    assert 0 < physics.full_dose["ttf50"]["mean"] < 0.5 / pair.spacing[1]
    assert len(physics.full_dose["lesions"]) == 8  # every QA disc found


def test_identity_row_is_the_input_score(evaluation_run, tiny_dataset):
    pair = test_pairs(tiny_dataset)[0]  # the patient (the QA cylinder is second)
    flat = flat_region_mask(pair.target)
    for window in METRIC_WINDOWS:
        expected = volume_metrics(pair.source, pair.target, window, flat_mask=flat)
        assert volume_scores(evaluation_run, "identity", pair.patient)[window_name(window)] == expected


def test_ceiling_row_is_decode_encode_of_the_target(evaluation_run, tiny_dataset, tiny_model):
    pair = test_pairs(tiny_dataset)[0]  # the patient (the QA cylinder is second)
    enhancer = CTEnhancer.from_file(tiny_model)
    # The VAE by hand, untiled, on the target padded with air to the in-plane size the model's
    # sampling path pads every volume to (one U-Net window: GroupNorm sees the padding, so the
    # ceiling of the model's outputs is the VAE's output on the same padded volume).
    f = enhancer.autoencoder.downsample_factor
    min_h, min_w = enhancer.latent_window[1] * f, enhancer.latent_window[2] * f
    _, s, h, w = pair.target.shape
    padded = torch.nn.functional.pad(pair.target[None], (0, max(0, min_w - w), 0, max(0, min_h - h)), value=-1000.0)
    with torch.no_grad():
        latent = enhancer.autoencoder.encode(enhancer.windows.to_channels(padded))
        recon = enhancer.windows.to_hu(enhancer.autoencoder.decode(latent))[0, :, :s, :h, :w]
    assert torch.allclose(recon, enhancer.reconstruct(pair.target), atol=1e-2)
    flat = flat_region_mask(pair.target)
    for window in METRIC_WINDOWS:
        expected = volume_metrics(recon, pair.target, window, flat_mask=flat)
        assert volume_scores(evaluation_run, "vae_ceiling", pair.patient)[window_name(window)] == pytest.approx(expected, rel=1e-5)


def test_trained_redcnn_row_and_file(evaluation_run, tiny_dataset):
    path = evaluation_run / "redcnn.pt"
    assert path.is_file()
    state = torch.load(path, weights_only=True)
    assert state["format"] == "ctv2v-redcnn" and state["config"]["channels"] == 4
    method = RedCNNMethod(path)
    assert method.status is None
    pair = test_pairs(tiny_dataset)[0]  # the patient (the QA cylinder is second)
    out = method.enhance(pair.source).hu
    flat = flat_region_mask(pair.target)
    expected = volume_metrics(out, pair.target, (-160, 240), flat_mask=flat)
    assert volume_scores(evaluation_run, "redcnn", pair.patient)[SOFT] == pytest.approx(expected, rel=1e-6)


class ReturnsTarget(Method):
    name = "oracle_target"
    uses_target = True

    def enhance(self, source_hu, target_hu=None):
        return Enhancement(hu=target_hu.clone())


def test_perfect_method_scores_the_cap(tiny_dataset, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "evaluate.yaml"))
    parser.update({"datalist": str(tiny_dataset / "datalist.json")})
    results = Evaluation(
        parser.get_parsed_content("test_dataset"), [Identity(), ReturnsTarget()], tmp_path, progress=False,
    ).run()
    for window in results["windows"]:
        perfect = results["methods"]["oracle_target"]["metrics"][window]
        assert perfect["psnr"] == PSNR_CAP and perfect["volume_psnr"] == PSNR_CAP
        assert perfect["ssim"] == pytest.approx(1.0, abs=1e-6) and perfect["rmse"] == 0.0
        assert results["methods"]["identity"]["metrics"][window]["psnr"] < PSNR_CAP
    assert (tmp_path / "report.md").is_file()


def test_untrained_redcnn_row_says_so(tmp_path):
    method = RedCNNMethod(tmp_path / "missing.pt")
    assert method.status.startswith("not trained")


def test_redcnn_network_shapes_save_and_load(tmp_path):
    torch.manual_seed(0)
    network = RedCNN3D(in_channels=3, channels=4, kernel_size=(3, 5, 5)).eval()
    x = torch.randn(1, 3, 5, 24, 30)
    assert network(x).shape == x.shape
    zero = RedCNN3D(in_channels=3, channels=4)
    for p in zero.parameters():
        torch.nn.init.zeros_(p)
    assert torch.equal(zero(x), x)  # the outer shortcut: an untrained residual net is the identity

    enhancer = RedCNNEnhancer(network, ((-1024, 3072), (-160, 240), (-1000, 200)))
    enhancer.save(tmp_path / "redcnn.pt")
    loaded = load_redcnn(tmp_path / "redcnn.pt")
    hu = torch.full((1, 6, 16, 40), -1000.0)  # smaller than the unpadded layers' minimum: padded
    hu[:, :, 4:12, 8:32] = 50.0
    assert torch.equal(loaded(hu), enhancer(hu)) and loaded(hu).shape == hu.shape
    tiled = load_redcnn(tmp_path / "redcnn.pt", tile=(4, 32, 32), overlap=(2, 8, 8))
    big = torch.randn(1, 6, 48, 48) * 50
    assert tiled(big).shape == big.shape and torch.isfinite(tiled(big)).all()


def test_redcnn_config_trains_and_resumes(tiny_dataset, tmp_path, monkeypatch):
    from bundle.evaluation.redcnn import train_redcnn

    monkeypatch.chdir(REPO)
    overrides = {
        "dataset_dir": str(tiny_dataset), "output_dir": str(tmp_path), "redcnn_path": str(tmp_path / "r.pt"),
        "device": "cpu", "redcnn_epochs": 2, "redcnn_channels": 4, "samples_per_volume": 1, "batch_size": 1,
        "cache": "none", "num_workers": 0, "train_patch_size": [8, 64, 64], "save_every": 1,
    }
    train_redcnn([str(REPO / "configs" / "redcnn.yaml")], overrides)
    first = torch.load(tmp_path / "r.pt", weights_only=True)["state_dict"]
    checkpoints = sorted(p.name for p in (tmp_path / "redcnn_checkpoints").glob("redcnn_checkpoint_*.pt"))
    # 2 training volumes x 2 epochs, saved every iteration, the newest two kept
    assert checkpoints == ["redcnn_checkpoint_3.pt", "redcnn_checkpoint_4.pt"]
    (tmp_path / "r.pt").unlink()
    train_redcnn([str(REPO / "configs" / "redcnn.yaml")], overrides)  # finished: resumes at the end, re-exports
    again = torch.load(tmp_path / "r.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_the_2d_redcnn_sees_one_slice_at_a_time(tiny_dataset, tmp_path, monkeypatch):
    """configs/redcnn_2d.yaml: the published 2D network on every slice, its own file and row."""
    from bundle.evaluation.redcnn import load_redcnn, train_redcnn

    monkeypatch.chdir(REPO)
    overrides = {
        "dataset_dir": str(tiny_dataset), "output_dir": str(tmp_path), "redcnn_path": str(tmp_path / "r2d.pt"),
        "device": "cpu", "redcnn_epochs": 1, "redcnn_channels": 4, "samples_per_volume": 1, "batch_size": 1,
        "cache": "none", "num_workers": 0, "train_patch_size": [8, 64, 64],
    }
    train_redcnn([str(REPO / "configs" / "redcnn.yaml"), str(REPO / "configs" / "redcnn_2d.yaml")], overrides)
    enhancer = load_redcnn(tmp_path / "r2d.pt")
    assert enhancer.network.config["kernel_size"] == [1, 5, 5]
    assert (tmp_path / "redcnn_2d_checkpoints").is_dir()
    # slices do not see each other: changing one slice changes only that slice's output
    volume = test_pairs(tiny_dataset)[0].source
    changed = volume.clone()
    changed[0, 3] += 100.0
    difference = (enhancer(changed) - enhancer(volume)).abs().amax(dim=(-1, -2))[0]
    assert difference[3] > 0 and torch.count_nonzero(difference) == 1


def test_classical_filters_tune_and_denoise(tiny_dataset):
    pair = test_pairs(tiny_dataset)[0]  # the patient (the QA cylinder is second)
    validation = test_pairs(tiny_dataset, "validation")
    identity = volume_metrics(pair.source, pair.target, (-160, 240))["psnr"]
    for method in (GaussianFilter(sigmas=(0.5, 1.0), slice_sigmas=(0.0,)), NonLocalMeans(h_factors=(0.8, 1.5))):
        info = method.prepare(validation)
        assert info["tuned"] and len(info["grid"]) == 2
        out = method.enhance(pair.source).hu
        assert out.shape == pair.source.shape and out.dtype == torch.float32
        assert volume_metrics(out, pair.target, (-160, 240))["psnr"] > identity
    sigma = estimate_noise_sigma(pair.source[0, 4].numpy())
    assert 5 < sigma < 60  # the demo source has about 20 HU of (correlated) noise


def test_panel_slice_prefers_tissue_near_the_middle():
    volume = torch.full((1, 9, 8, 8), -1000.0)
    volume[:, 1:3] = 40.0
    volume[:, 5:7] = 40.0
    volume[:, 8, :2] = 40.0  # too little tissue to be shown
    assert panel_slice(volume) == 5


def test_diffusion_rows_from_settings(tiny_model):
    enhancer = CTEnhancer.from_file(tiny_model)
    rows = diffusion_methods(enhancer, sampling_steps=(50, 10), strength=0.5, strength_steps=50, num_samples=4, samples_steps=10)
    assert [r.name for r in rows] == ["ddim_50", "ddim_10", "ddim_50_strength_0.5", "ddim_10_mean_of_4"]
    assert [r.is_plain for r in rows] == [True, True, False, False]
    assert [r.name for r in diffusion_methods(enhancer, (20,), strength=1.0, num_samples=1)] == ["ddim_20"]
    assert isinstance(rows[0], DiffusionSampling) and rows[3].settings()["num_samples"] == 4


def test_model_ceiling_row_for_a_residual_model(tiny_model, tiny_dataset):
    pair = test_pairs(tiny_dataset)[0]  # the patient (the QA cylinder is second)
    spec = ModelCeiling(CTEnhancer.from_file(tiny_model))
    assert spec.status.startswith("n/a")
    enhancer = CTEnhancer.from_file(tiny_model, residual=True)
    row = ModelCeiling(enhancer)
    assert row.status is None and row.uses_target
    out = row.enhance(pair.source, pair.target).hu
    assert torch.equal(out, enhancer.ceiling(pair.source, pair.target))


def test_the_test_lists_dose_comes_from_the_data_and_is_not_swept_twice(tiny_dataset, tmp_path):
    """A folder simulated at 10 % is reported at 10 % (its demo.json), and its own dose's sweep list,
    another draw at the test list's dose, does not replace the test list's point of the sweep."""
    copy = tmp_path / "dose0.1"
    copy.mkdir()
    datalist = json.loads((tiny_dataset / "datalist.json").read_text())
    for entries in datalist.values():  # the same files, by absolute path
        for entry in entries if isinstance(entries, list) else []:
            for key, value in entry.items():
                if isinstance(value, str) and (tiny_dataset / value).exists():
                    entry[key] = str(tiny_dataset / value)
    (copy / "datalist.json").write_text(json.dumps(datalist))
    record = json.loads((tiny_dataset / "demo.json").read_text())
    assert record["settings"]["dose"] == 0.25 and 0.1 in record["settings"]["sweep_doses"]
    record["settings"]["dose"] = 0.1
    (copy / "demo.json").write_text(json.dumps(record))

    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "evaluate.yaml"))
    parser.update({"datalist": str(copy / "datalist.json")})
    assert parser.get_parsed_content("dose") == 0.1
    parser.update({"datalist": str(tiny_dataset / "datalist.json")})
    assert parser.get_parsed_content("dose") == 0.25

    transform = parser.get_parsed_content("val_transforms")
    doses = record["settings"]["sweep_doses"]
    assert sorted(sweep_datasets(copy / "datalist.json", doses, transform)) == sorted(doses)
    assert sorted(sweep_datasets(copy / "datalist.json", doses, transform, test_dose=0.1)) == sorted(
        d for d in doses if d != 0.1)


def test_the_attainable_d_prime_is_the_full_dose_index_capped_by_the_inputs_bound():
    from bundle.evaluation.evaluate import add_attainable_detectability

    def volume(*d_primes, key="d_prime"):
        return {"lesions": [{key: d} for d in d_primes], "lesion_summary": {"d_prime": float(np.mean(d_primes))}}

    # lesion 1: the input allows 1.5 of the full-dose 2.0; lesion 2: the full-dose 1.0 is reachable (bound 3.0)
    rows = {"identity": {"physics": {"p": {**volume(1.5, 3.0, key="d_prime_ideal_3d"),
                                           "lesion_summary": {"d_prime": 0.5}}}},
            "full_dose": {"physics": {"p": volume(2.0, 1.0)}},
            "model": {"physics": {"p": volume(1.0, 1.0), "q": volume(1.0)}}}
    add_attainable_detectability(rows)
    assert rows["full_dose"]["physics"]["p"]["lesion_summary"]["d_prime_attainable"] == pytest.approx(1.25)
    assert rows["model"]["physics"]["p"]["lesion_summary"]["d_prime_attainable_rel"] == pytest.approx(0.8)
    assert rows["full_dose"]["physics"]["p"]["lesion_summary"]["d_prime_attainable_rel"] == pytest.approx(1.2)
    assert "d_prime_attainable" not in rows["model"]["physics"]["q"]["lesion_summary"]  # no full-dose scan of q
