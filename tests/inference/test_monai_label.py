"""configs/inference.yaml run the way MONAI Label's bundle task runs a bundle, step for step.

monailabel 0.8.5 cannot be imported beside pydicom 3 (docs/deployment.md), so this replays its
sequence (``monailabel/tasks/infer/bundle.py`` and ``basic_infer.py``) without the server:

1. the bundle folder holds ``configs/inference.yaml``, ``configs/metadata.json`` and
   ``models/model.pt``; the server reads that ONE config file from its own working directory,
   with ``bundle_root`` set to the folder and the folder put on ``sys.path``;
2. the data keys are the first input and output of ``metadata.json``'s ``network_data_format``;
3. ``network_def`` is instantiated, then ``models/model.pt`` loaded into it with
   ``load_state_dict(torch.load(path, map_location=device), strict=False)``;
4. ``preprocessing``'s transforms run one by one, each ``LoadImaged`` switched to
   ``image_only=False`` (meta dicts beside the tensors);
5. ``inferer(data[image][None], network)`` under ``no_grad``, the first item of the batch kept;
6. ``postprocessing`` without ``SaveImaged``, then its ``Restored``: the prediction's channel
   dropped and its affine set to the input file's ``original_affine``, which the writer uses.

The result must be float HU on the input's own grid, equal to what
``python -m monai.bundle run inference`` writes for the same file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, LoadImaged, SaveImaged

from tests.inference.test_inference_config import REPO, build_tiny_model, run_inference


def label_bundle(root: Path, model: Path) -> Path:
    """A MONAI Label model folder with only what the task reads: no configs/common.yaml."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    for name in ("inference.yaml", "metadata.json"):
        shutil.copy(REPO / "configs" / name, root / "configs" / name)
    shutil.copy(model, root / "models" / "model.pt")
    (root / "bundle").symlink_to(REPO / "bundle", target_is_directory=True)  # the Python package
    return root


def restored(data: dict, key_pred: str, key_image: str) -> dict:
    """What monailabel's ``Restored`` does to a 3D prediction that needs no resampling."""
    image_meta = data[key_image].meta
    pred = data[key_pred]
    assert tuple(pred.shape[1:]) == tuple(int(n) for n in image_meta["spatial_shape"])  # else it resizes
    data[key_pred] = pred[0] if pred.shape[0] == 1 else pred
    data[f"{key_pred}_meta_dict"] = {"affine": image_meta["original_affine"]}
    return data


def run_like_monai_label(bundle_dir: Path, image_path: Path, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    config = ConfigParser()
    config.read_config(str(bundle_dir / "configs" / "inference.yaml"))
    config.config.update({"bundle_root": str(bundle_dir)})
    config.config.update({"device": device})
    sys.path.insert(0, str(bundle_dir))
    try:
        network = config.get_parsed_content("network_def", instantiate=True)
        metadata = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
        key_image = next(iter(metadata["network_data_format"]["inputs"]))
        key_pred = next(iter(metadata["network_data_format"]["outputs"]))

        pre = config.get_parsed_content("preprocessing", instantiate=True)
        pre = list(pre.transforms) if isinstance(pre, Compose) else pre
        for t in pre:
            if isinstance(t, LoadImaged):
                t._loader.image_only = False
        data = {key_image: str(image_path), "image_path": str(image_path), "device": device}
        for t in pre:
            data = t(data)

        network = copy.deepcopy(network).to(torch.device(device))
        checkpoint = torch.load(bundle_dir / "models" / "model.pt", map_location=torch.device(device))
        network.load_state_dict(checkpoint.get("model", checkpoint), strict=False)
        network.eval()
        inferer = config.get_parsed_content("inferer", instantiate=True)
        inputs = data[key_image]
        with torch.no_grad():
            outputs = inferer(inputs[None].to(torch.device(device)), network)
        data[key_pred] = outputs[0]

        post = config.get_parsed_content("postprocessing", instantiate=True)
        post = [t for t in (post.transforms if isinstance(post, Compose) else post) if not isinstance(t, SaveImaged)]
        for t in post:
            data = t(data)
        data = restored(data, key_pred, key_image)
    finally:
        sys.path.remove(str(bundle_dir))
    pred = data[key_pred]
    return np.asarray(pred.array if hasattr(pred, "array") else pred), np.asarray(data[f"{key_pred}_meta_dict"]["affine"])


def test_monai_label_sequence_returns_float_hu_on_the_input_grid(tmp_path):
    # the tiny model's sizes differ from configs/common.yaml's: only the model file describes them
    model = build_tiny_model(tmp_path / "model.pt")
    bundle_dir = label_bundle(tmp_path / "apps" / "model" / "ctv2v", model)
    # a file that needs the orientation inverted, fewer slices than a slab and an odd plane
    rng = np.random.default_rng(0)
    volume = np.full((60, 70, 5), -1000.0, np.float32)
    volume[10:50, 10:60] = rng.normal(40.0, 20.0, size=(40, 50, 5))
    volume[25:35, 30:40] = 1200.0  # bone
    affine = np.array([[0.8, 0, 0, -30.0], [0, -0.7, 0, 20.0], [0, 0, 2.5, -5.0], [0, 0, 0, 1]])
    image_path = tmp_path / "studies" / "ct.nii.gz"
    image_path.parent.mkdir()
    nib.save(nib.Nifti1Image(volume, affine), str(image_path))

    server_dir = tmp_path / "server"  # the server's working directory: not the bundle's
    server_dir.mkdir()
    with contextlib.chdir(server_dir):
        pred, pred_affine = run_like_monai_label(bundle_dir, image_path)

    assert pred.shape == volume.shape
    assert pred.dtype == np.float32 and np.isfinite(pred).all()
    np.testing.assert_allclose(pred_affine, affine, atol=1e-5)
    assert pred[25:35, 30:40].mean() > 500  # HU, not a label map: bone stays bone
    assert not np.array_equal(pred, volume)  # the network ran

    # the same numbers as the bundle's own inference workflow writes for this file
    output_dir = tmp_path / "out"
    run_inference(
        ["configs/inference.yaml"], model_path=str(model), input_dir=str(image_path.parent),
        output_dir=str(output_dir), device="$torch.device('cpu')",
    )
    written = nib.load(str(output_dir / "ct_enhanced.nii.gz"))
    np.testing.assert_allclose(pred, np.asanyarray(written.dataobj), atol=1e-3)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
