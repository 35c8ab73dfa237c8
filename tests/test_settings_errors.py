"""Bad settings fail before any heavy work with one line ``<setting> = <value>: <what is allowed>``:
the training recipe (configs/train.yaml, before any network, dataset, output folder or checkpoint),
the sampler classes, ``CTEnhancer`` (before it reads its file), ``ctv2v enhance`` (before it loads
the model) and ``ctv2v evaluate``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from bundle.cli import main
from bundle.utils.validation import SettingError, user_error

REPO = Path(__file__).resolve().parents[1]
TINY_NETWORK = yaml.safe_load((REPO / "tests" / "tiny.yaml").read_text())["network"]


def edited_datalist(tiny_dataset: Path, folder: Path, change) -> str:
    datalist = json.loads((tiny_dataset / "datalist.json").read_text())
    for entries in datalist.values():  # absolute paths: the copy lives elsewhere
        for entry in entries if isinstance(entries, list) else ():
            for key, value in list(entry.items()) if isinstance(entry, dict) else ():
                if key in ("source", "target", "clean", "labels", "objects", "target_repeat"):
                    entry[key] = str(tiny_dataset / value)
    change(datalist)
    path = folder / "datalist.json"
    path.write_text(json.dumps(datalist))
    return str(path)


def _missing_file(datalist):
    datalist["training"][0]["source"] = "/nowhere/P1_source.nii.gz"


# (overrides of the tiny recipe, or a datalist edit; words the one line must contain)
TRAINING_CASES = {
    "in-plane not a multiple": ({"train_patch_size": [8, 60, 60]},
                                "train_patch_size = [8, 60, 60]: ", "multiples of 64"),
    "in-plane a multiple of the VAE only": ({"train_patch_size": [8, 72, 72]},
                                            "train_patch_size = [8, 72, 72]: ", "multiples of 64"),
    "fewer slices than the slab": ({"train_patch_size": [4, 64, 64]},
                                   "train_patch_size = [4, 64, 64]: ", "slices >= network#num_slices = 8"),
    "two sizes": ({"train_patch_size": [64, 64]}, "train_patch_size = [64, 64]: ", "three integers"),
    "unknown prediction type": ({"prediction_type": "foo"},
                                "prediction_type = 'foo': ", "one of 'epsilon', 'v_prediction', 'sample'"),
    "negative steps": ({"num_inference_steps": -1}, "num_inference_steps = -1: ", "an integer from 1 to 1000"),
    "zero validation steps": ({"val_num_inference_steps": 0}, "val_num_inference_steps = 0: ", "from 1 to 1000"),
    "more steps than timesteps": ({"num_train_timesteps": 100, "val_num_inference_steps": 500},
                                  "val_num_inference_steps = 500: ", "from 1 to 100"),
    "zero timesteps": ({"num_train_timesteps": 0}, "num_train_timesteps = 0: ", "an integer >= 1"),
    "zero batch": ({"batch_size": 0}, "batch_size = 0: ", "an integer >= 1"),
    "negative epochs": ({"num_epochs": -2}, "num_epochs = -2: ", "an integer >= 0"),
    "latent cache not a switch": ({"phase1_latent_cache": "maybe"}, "phase1_latent_cache = 'maybe': ", "true or false"),
    "path on sampled latents without a path": ({"path_sample_epochs": 1, "fidelity_channels": "$None"},
                                               "path_sample_epochs = 1: ", "0 without a fidelity path"),
    "unknown latent for the path": ({"path_sample_latent": "source"}, "path_sample_latent = 'source': ",
                                    "one of 'sampled', 'target'"),
    "negative path epochs": ({"path_sample_epochs": -1}, "path_sample_epochs = -1: ", "an integer >= 0"),
    "datalist with a missing file": (_missing_file, "training[0].source = '/nowhere/P1_source.nii.gz': ",
                                     "an existing NIfTI file or DICOM folder"),
    "datalist with no training entries": (lambda d: d.update(training=[]), "training = []: ",
                                          "at least one"),
    "datalist without a training list": (lambda d: d.pop("training"), "datalist = '",
                                         "a JSON object with a 'training' list"),
    "datalist without a validation list": (lambda d: d.pop("validation"), "datalist = '",
                                           "a JSON object with a 'validation' list"),
    "no datalist": ({"datalist": "/nowhere/datalist.json"}, "datalist = '/nowhere/datalist.json': ", "not found"),
}


@pytest.mark.parametrize("case", list(TRAINING_CASES))
def test_training_settings_fail_first_with_one_line(case, tiny_dataset, tmp_path, monkeypatch):
    from monai.bundle import ConfigParser

    change, setting, allowed = TRAINING_CASES[case]
    monkeypatch.chdir(REPO)
    run = tmp_path / "run"
    overrides = {
        "dataset_dir": str(tiny_dataset), "output_dir": str(run), "model_path": str(run / "model.pt"),
        "network": dict(TINY_NETWORK), "train_patch_size": [8, 64, 64], "batch_size": 1, "vae_epochs": 1,
        "num_epochs": 1, "phase1_epochs": 1, "num_workers": 0, "cache": "none", "val_num_inference_steps": 2,
        "amp": "fp32", "device": "cpu",
    }
    if callable(change):
        overrides["datalist"] = edited_datalist(tiny_dataset, tmp_path, change)
    else:
        overrides.update(change)
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "train.yaml"))
    parser.update(overrides)
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("training")
    seconds = time.monotonic() - start
    error = user_error(info.value)
    assert isinstance(error, SettingError), info.value
    message = str(error)
    assert "\n" not in message and setting in message and allowed in message, message
    assert not run.exists(), "the run started before the setting was checked"
    assert seconds < 20


def test_a_good_tiny_recipe_passes_the_check(tiny_dataset, tmp_path, monkeypatch):
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO)
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "train.yaml"))
    parser.update({"dataset_dir": str(tiny_dataset), "output_dir": str(tmp_path / "run"),
                   "network": dict(TINY_NETWORK), "train_patch_size": [8, 64, 64]})
    parser.get_parsed_content("training#0")  # the check and the seed, nothing else
    assert not (tmp_path / "run").exists()


# --- the sampler classes and CTEnhancer ------------------------------------------------------------
def _schedule(**kwargs):
    from bundle.diffusion import DiffusionSchedule

    return DiffusionSchedule(**kwargs)


def _sampler(**kwargs):
    from bundle.diffusion import DDIMSampler

    return DDIMSampler(_schedule(), **kwargs)


def _enhancer_from_missing_file(**settings):
    from bundle.inference import CTEnhancer

    # the settings are checked before the file is read: the error is the setting, not "not found"
    return CTEnhancer.from_file("/nowhere/model.pt", **settings)


CLASS_CASES = {
    "schedule prediction type": (lambda: _schedule(prediction_type="foo"), "prediction_type = 'foo': ", "one of"),
    "schedule name": (lambda: _schedule(schedule="cosine2"), "schedule = 'cosine2': ", "cosine"),
    "sampler negative steps": (lambda: _sampler(num_inference_steps=-1), "num_inference_steps = -1: ", "from 1 to"),
    "sampler negative eta": (lambda: _sampler(eta=-0.5), "eta = -0.5: ", ">= 0"),
    "sampler strength 0": (lambda: _sampler().num_steps(0), "strength = 0: ", "(0, 1]"),
    "sampler strength 1.5": (lambda: _sampler().num_steps(1.5), "strength = 1.5: ", "(0, 1]"),
    "enhancer strength 0": (lambda: _enhancer_from_missing_file(strength=0), "strength = 0: ", "(0, 1]"),
    "enhancer strength 1.5": (lambda: _enhancer_from_missing_file(strength=1.5), "strength = 1.5: ", "(0, 1]"),
    "enhancer negative steps": (lambda: _enhancer_from_missing_file(num_inference_steps=-1),
                                "num_inference_steps = -1: ", "an integer >= 1"),
    "enhancer zero samples": (lambda: _enhancer_from_missing_file(num_samples=0), "num_samples = 0: ", ">= 1"),
    "enhancer precision": (lambda: _enhancer_from_missing_file(precision="fp8"), "precision = 'fp8': ", "one of"),
    "enhancer negative source band": (lambda: _enhancer_from_missing_file(source_lowpass_sigma=-1),
                                      "source_lowpass_sigma = -1: ", ">= 0"),
    "enhancer source levels descending": (lambda: _enhancer_from_missing_file(source_lowpass_levels=[60, 0]),
                                          "source_lowpass_levels = [60, 0]: ", "ascending"),
    "enhancer source support 0": (lambda: _enhancer_from_missing_file(source_lowpass_min_support=0),
                                  "source_lowpass_min_support = 0: ", "(0, 1]"),
    "enhancer negative slice band": (lambda: _enhancer_from_missing_file(source_lowpass_sigma_z=-1),
                                     "source_lowpass_sigma_z = -1: ", "slices >= 0"),
}


@pytest.mark.parametrize("case", list(CLASS_CASES))
def test_class_settings_fail_with_one_line(case):
    make, setting, allowed = CLASS_CASES[case]
    with pytest.raises(SettingError) as info:
        make()
    message = str(info.value)
    assert "\n" not in message and message.startswith(setting) and allowed in message, message


def test_enhance_call_settings_are_checked():
    """0 steps used to fall back silently to the default (``0 or default``)."""
    import torch

    from bundle.inference import CTEnhancer
    from bundle.networks import ConditionalUNet3D, VideoVAE

    enhancer = CTEnhancer(
        VideoVAE(channels=(8, 16, 16, 16), norm_num_groups=4, num_res_blocks=1, num_mid_blocks=1),
        ConditionalUNet3D(model_channels=16, channel_mult=(1, 2, 2, 2), num_heads=2, norm_num_groups=4,
                          time_embed_dim=32, num_res_blocks=1),
    )
    volume = torch.zeros(1, 8, 64, 64)
    for kwargs, setting in (({"num_inference_steps": 0}, "num_inference_steps = 0: "),
                            ({"strength": 1.5}, "strength = 1.5: "), ({"num_samples": 0}, "num_samples = 0: ")):
        with pytest.raises(SettingError, match="^" + setting.replace("(", r"\(").replace(".", r"\.")):
            enhancer.enhance(volume, **kwargs)


# --- ctv2v enhance and evaluate ---------------------------------------------------------------------
ENHANCE_CASES = {
    "negative steps": (["--steps", "-1"], "--steps = -1: an integer >= 1"),
    "strength 0": (["--strength", "0"], "--strength = 0.0: a number in (0, 1]"),
    "strength 1.5": (["--strength", "1.5"], "--strength = 1.5: a number in (0, 1]"),
    "negative eta": (["--eta", "-1"], "--eta = -1.0: a number >= 0"),
    "zero samples": (["--num-samples", "0"], "--num-samples = 0: an integer >= 1"),
    "negative source band": (["--source-lowpass-sigma", "-1"], "--source-lowpass-sigma = -1.0: a number of pixels >= 0"),
    "unknown source levels": (["--source-lowpass-levels", "bone"], "--source-lowpass-levels = 'bone': 'tissue', 'none'"),
    "source support 2": (["--source-lowpass-min-support", "2"], "--source-lowpass-min-support = 2.0: a share"),
    "negative slice band": (["--source-lowpass-sigma-z", "-1"], "--source-lowpass-sigma-z = -1.0: a number of slices >= 0"),
}


@pytest.mark.parametrize("case", list(ENHANCE_CASES))
def test_enhance_flags_fail_before_the_model_is_read(case, tmp_path, capsys):
    flags, expected = ENHANCE_CASES[case]
    (tmp_path / "input").mkdir()
    code = main(["enhance", str(tmp_path / "input"), str(tmp_path / "out"), "--model", str(tmp_path / "none.pt"),
                 "--device", "cpu", "--no-progress", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {expected}"), err
    assert "\n" not in err and "none.pt" not in err
    assert not (tmp_path / "out").exists()


def test_evaluate_with_a_bad_datalist_is_one_line(tiny_dataset, tmp_path, capsys):
    datalist = edited_datalist(tiny_dataset, tmp_path, lambda d: d["test"][0].update(target="gone.nii.gz"))
    code = main(["evaluate", "--datalist", datalist, "--model", str(tmp_path / "none.pt"),
                 "--output", str(tmp_path / "report"), "--set", "device=cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert err.startswith("ctv2v evaluate: error: datalist ") and "test[0].target = 'gone.nii.gz': " in err
    assert not (tmp_path / "report").exists()


def test_switches_take_the_words_a_command_line_gives():
    # `python -m monai.bundle run training --phase1_latent_cache true` passes the text "true"
    from bundle.utils.validation import SettingError, check_bool

    assert check_bool("phase1_latent_cache", "true") is True
    assert check_bool("phase1_latent_cache", "False") is False
    assert check_bool("phase1_latent_cache", False) is False
    with pytest.raises(SettingError, match="true or false"):
        check_bool("phase1_latent_cache", "on and off")
