"""configs/inference.yaml through monai.bundle: datalist and folder inputs, NIfTI outputs with the
sources' geometry, and the ids MONAI Deploy / Label read."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[2]
CONFIG = "configs/inference.yaml"
TINY_NETWORK = yaml.safe_load((Path(__file__).resolve().parents[1] / "tiny.yaml").read_text())["network"]
# tiles for 64 x 64 volumes (the spec's are 128 x 128 slabs; padding to them is slower), stored in
# the model file like every geometry setting
TINY_GEOMETRY = {
    "latent_window": [8, 8, 8],
    "latent_overlap": [4, 4, 4],
    "image_tile": [8, 64, 64],
    "image_overlap": [4, 32, 32],
}
CPU = {"device": "$torch.device('cpu')"}


def parse(overrides: dict, files=(CONFIG,)) -> ConfigParser:
    parser = ConfigParser()
    with contextlib.chdir(REPO):
        parser.read_config([str(f) for f in files])
        parser.update(overrides)
        parser.parse()
    return parser


def build_tiny_model(path: Path, network: dict = TINY_NETWORK, seed: int = 0) -> Path:
    """A random model file of the tiny sizes, built from configs/common.yaml's network definitions
    (the ones training uses), its U-Net perturbed so that the sampler's output depends on it."""
    from bundle.inference import CTEnhancer

    common = parse({"network": network, "fidelity_channels": "$None"}, files=("configs/common.yaml",))
    network = CTEnhancer(
        common.get_parsed_content("autoencoder_def"), common.get_parsed_content("unet_def"),
        hu_windows=common.get_parsed_content("hu_windows"), **TINY_GEOMETRY,
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in network.unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    network.save(path)
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from bundle.data.demo import make_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, num_volumes=3, slices=8, size=64, workers=1, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "model.pt")


def run_inference(config_files, **overrides) -> None:
    import monai.bundle

    with contextlib.chdir(REPO):
        monai.bundle.run("inference", config_file=[str(f) for f in config_files], **overrides)


def check_output(path: Path, source) -> nib.Nifti1Image:
    """The output is readable NIfTI on the source's voxel grid (shape and affine)."""
    from bundle.data.volume_io import load_ct

    volume = load_ct(source)
    image = nib.load(str(path))
    data = np.asanyarray(image.dataobj)
    assert data.shape == volume.hu_ijk.shape
    np.testing.assert_allclose(image.affine, volume.affine_ras, atol=1e-4)
    assert np.isfinite(data).all()
    return image


def test_datalist_test_entries_combined_with_demo_config(demo, model_path, tmp_path):
    output_dir = tmp_path / "out"
    run_inference(
        [CONFIG, "configs/demo.yaml"], model_path=str(model_path), dataset_dir=str(demo),
        output_dir=str(output_dir), num_inference_steps=2, device="$torch.device('cpu')",
    )
    from bundle.data.datalist import load_datalist

    tests = load_datalist(demo / "datalist.json", "test")
    assert tests
    for entry in tests:
        name = Path(entry["source"]).name.split(".")[0]
        image = check_output(output_dir / f"{name}_enhanced.nii.gz", entry["source"])
        assert image.get_data_dtype() == np.float32


def test_input_dir_with_nifti_and_dicom_series_writes_int16(demo, model_path, tmp_path):
    input_dir = tmp_path / "inputs"
    input_dir.mkdir()
    # a NIfTI file that needs every inverse: not SPL-oriented (RAS storage with a flipped axis),
    # fewer slices than a slab (padded) and an in-plane size not divisible by 8 (padded)
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 1500, size=(70, 60, 5)).astype(np.int16)
    affine = np.array([[0.8, 0, 0, -30.0], [0, -0.7, 0, 20.0], [0, 0, 2.5, -5.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(input_dir / "odd.nii.gz"))
    shutil.copytree(demo / "dicom" / "demo002", input_dir / "series_a")
    output_dir = tmp_path / "out"
    run_inference(
        [CONFIG], model_path=str(model_path), input_dir=str(input_dir), output_dir=str(output_dir),
        num_inference_steps=2, output_dtype="int16", device="$torch.device('cpu')",
    )
    odd = check_output(output_dir / "odd_enhanced.nii.gz", input_dir / "odd.nii.gz")
    assert odd.get_data_dtype() == np.int16
    series = check_output(output_dir / "series_a_enhanced.nii.gz", input_dir / "series_a")
    assert series.get_data_dtype() == np.int16


def test_deploy_ids_and_state_dict_loading(model_path):
    parser = parse({"model_path": str(model_path), **CPU})
    for key in ("network_def", "preprocessing", "postprocessing", "inferer", "device"):
        assert key in parser
    network = parser.get_parsed_content("network_def")
    # the file's sizes and geometry, not the spec's defaults
    assert network.autoencoder.config["channels"] == TINY_NETWORK["vae_channels"]
    assert list(network.latent_window) == TINY_GEOMETRY["latent_window"]
    # MONAI Deploy / Label: one network, one file, load_state_dict(torch.load(..., weights_only=True))
    network.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    inferer = parser.get_parsed_content("inferer")
    source = torch.full((1, 1, 8, 64, 64), -1000.0)
    source[..., 16:48, 16:48] = 40.0
    out = inferer(source, network.eval())
    assert out.shape == source.shape and torch.isfinite(out).all()


def test_model_file_of_another_architecture_is_refused(model_path, tmp_path):
    other = build_tiny_model(tmp_path / "other.pt", network={**TINY_NETWORK, "unet_model_channels": 8})
    network = parse({"model_path": str(other), **CPU}).get_parsed_content("network_def")
    with pytest.raises(ValueError, match="unet"):
        network.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(RuntimeError) as error:  # monai.bundle wraps what the constructor raised
        parse({"model_path": str(tmp_path / "nowhere.pt"), **CPU}).get_parsed_content("network_def")
    assert isinstance(error.value.__cause__, FileNotFoundError)
    assert str(error.value.__cause__).endswith("nowhere.pt: not found")


def test_postprocessing_undoes_preprocessing_exactly(tmp_path):
    """With an identity network the written volume is the input, voxel for voxel: the inverse of
    the padding and of the SPL orientation lands every value where it came from."""
    input_dir = tmp_path / "inputs"
    input_dir.mkdir()
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 1500, size=(70, 60, 5)).astype(np.float32)
    affine = np.array([[0.0, 0.8, 0, -30.0], [-0.7, 0, 0, 20.0], [0, 0, -2.5, -5.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(input_dir / "rotated.nii.gz"))
    output_dir = tmp_path / "out"
    run_inference(
        [CONFIG], network_def="$torch.nn.Identity()", input_dir=str(input_dir),
        output_dir=str(output_dir), device="$torch.device('cpu')",
    )
    image = nib.load(str(output_dir / "rotated_enhanced.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), data)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
