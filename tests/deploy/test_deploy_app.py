"""The MONAI Deploy application (deploy/) writes the same derived series as ``ctv2v enhance``.

The app's operators hand the SDK's objects to :mod:`bundle.inference.deploy`; that code is tested
here everywhere. The app itself (Holoscan runtime, the SDK's loader, selector and series-to-volume
operators) runs only where ``monai-deploy-app-sdk`` is installed (``pip install -e .[deploy]``:
several hundred MB with Holoscan, so not in CI); elsewhere that test says why it skips.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from bundle.cli import main
from bundle.dicom import write_ct_series
from bundle.inference.batch.run import model_version_of
from bundle.inference.deploy import (
    enhance_series,
    load_bundle_network,
    write_enhanced_series,
)
from tests.inference.test_inference_config import REPO, build_tiny_model

STEPS = 10  # the default of configs/inference.yaml (which the app runs) and of `ctv2v enhance`
SHAPE = (9, 64, 56)  # (slices, rows, cols): more slices than one window, rows != cols
SPACING = (2.0, 0.7, 0.8)
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID777", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.77"}


def phantom(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = np.full(SHAPE, -1000.0, np.float32)
    hu[:, 12:52, 10:46] = 40.0
    hu[:, 28:36, 20:30] = 900.0  # bone
    return np.round(hu + rng.normal(0, 25, SHAPE).astype(np.float32))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A study with an original axial CT and a localizer, a tiny model, and what `ctv2v enhance`
    wrote for it."""
    root = tmp_path_factory.mktemp("deploy")
    input_dir = root / "input"
    common = {"spacing": SPACING, "origin": (-20.0, -15.0, 100.0), "direction": np.eye(3), "patient": PATIENT,
              "frame_of_reference_uid": PATIENT["StudyInstanceUID"] + ".1"}
    files = write_ct_series(phantom(0), input_dir / "ct", series_description="low dose", series_number=3, **common)
    write_ct_series(phantom(1)[:1], input_dir / "scout", series_description="scout", series_number=1,
                    image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), **common)
    model = build_tiny_model(root / "model.pt")
    reference = root / "ctv2v_enhance"
    # one thread, like every test (tests/conftest.py): another thread count sums in another order
    # and moves a few voxels across an HU rounding boundary
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    code = main(["enhance", str(input_dir), str(reference), "--model", str(model), "--steps", str(STEPS),
                 "--device", "cpu", "--no-progress"])
    torch.set_num_threads(threads)
    assert code == 0
    return input_dir, files, model, reference


def series_by_instance(folder: Path) -> dict[int, pydicom.Dataset]:
    datasets = [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
    return {int(ds.InstanceNumber): ds for ds in datasets}


def assert_same_series(written: Path, reference: Path) -> None:
    """Pixel for pixel, slice for slice, with the same geometry and recorded provenance."""
    ours, theirs = series_by_instance(written), series_by_instance(reference)
    assert sorted(ours) == sorted(theirs) == list(range(1, SHAPE[0] + 1))
    for number, ds in ours.items():
        other = theirs[number]
        np.testing.assert_array_equal(ds.pixel_array, other.pixel_array)
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
                        "RescaleIntercept", "ImageType", "SeriesDescription", "DerivationDescription",
                        "StudyInstanceUID", "FrameOfReferenceUID"):
            assert ds.get(keyword) == other.get(keyword), keyword


def test_deploy_core_writes_what_ctv2v_enhance_writes(case, tmp_path):
    _, files, model, reference = case
    network, model_file = load_bundle_network(REPO, model)
    assert network.num_inference_steps == STEPS
    volume, hu, settings = enhance_series(network, list(reversed(files)))  # any file order
    assert hu.dtype == np.float32 and hu.shape == SHAPE
    folder = write_enhanced_series(hu, volume, tmp_path / "out", settings=settings,
                                   model_version=model_version_of(model_file))
    assert not list((tmp_path / "out").glob("*.partial"))
    assert_same_series(folder, reference)
    with pytest.raises(FileExistsError, match="exists"):  # nothing is overwritten
        write_enhanced_series(hu, volume, tmp_path / "out", settings=settings, model_version="x")


def test_sdk_volume_that_differs_from_the_files_is_refused(case):
    _, files, model, _ = case
    network, _ = load_bundle_network(REPO, model, num_inference_steps=2)
    flipped = phantom(0)[::-1]  # the slices in the other order
    with pytest.raises(ValueError, match="differs from the files"):
        enhance_series(network, files, voxels=flipped)
    with pytest.raises(ValueError, match="shape"):
        enhance_series(network, files, voxels=flipped[1:])


def test_unknown_setting_and_missing_config_are_named(case, tmp_path):
    _, _, model, _ = case
    with pytest.raises(KeyError, match="num_steps"):
        load_bundle_network(REPO, model, num_steps=3)
    with pytest.raises(FileNotFoundError, match="inference.yaml"):
        load_bundle_network(tmp_path, model)


SDK_MISSING = importlib.util.find_spec("monai.deploy") is None or importlib.util.find_spec("holoscan") is None


@pytest.mark.skipif(SDK_MISSING, reason="monai-deploy-app-sdk (Holoscan) is not installed: `pip install -e .[deploy]` "
                    "(the operators' work is tested above without it)")
def test_deploy_app_end_to_end_writes_what_ctv2v_enhance_writes(case, tmp_path):
    input_dir, _, model, reference = case
    output = tmp_path / "app_output"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # as the reference ran
    run = subprocess.run([sys.executable, str(REPO / "deploy" / "app.py"), "-i", str(input_dir), "-o", str(output),
                          "-m", str(model)], check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    folders = [p for p in output.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders  # the CT, not the localizer
    assert_same_series(folders[0], reference)
