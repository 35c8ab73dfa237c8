"""Run this bundle through MONAI Label's own bundle task and compare with `monai.bundle run inference`.

Needs monailabel in the environment (docs/deployment.md: monailabel 0.8.5 installed with --no-deps
plus the modules its bundle task imports). It builds a MONAI Label model folder holding only what
the task reads (configs/inference.yaml, configs/metadata.json, models/model.pt, the `bundle`
package), runs `BundleInferTask(folder, {})({"image": ...})` from another working directory, and
prints the result's dtype, shape and geometry against the input's and the largest difference in HU
from what `python -m monai.bundle run inference` writes for the same file.

    python scripts/check_monai_label.py --model models/model.pt [--image ct.nii.gz] [--steps 20]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def label_model_folder(root: Path, model: Path, steps: int | None) -> Path:
    folder = root / "apps" / "model" / "ctv2v"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    config = (REPO / "configs" / "inference.yaml").read_text()
    if steps is not None:  # a shorter sampler for a quick check (MONAI Label has no per-request steps)
        config = config.replace("num_inference_steps: 50", f"num_inference_steps: {steps}")
    (folder / "configs" / "inference.yaml").write_text(config)
    shutil.copy(REPO / "configs" / "metadata.json", folder / "configs" / "metadata.json")
    shutil.copy(model, folder / "models" / "model.pt")
    (folder / "bundle").symlink_to(REPO / "bundle", target_is_directory=True)
    return folder


def phantom_image(path: Path) -> Path:
    """A body-like NIfTI that needs every inverse: RAS storage with a flipped axis, odd sizes."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    volume = np.full((100, 90, 12), -1000.0, np.float32)
    volume[15:85, 10:80] = rng.normal(40.0, 25.0, size=(70, 70, 12))
    volume[40:55, 35:50] = 1200.0
    affine = np.array([[0.8, 0, 0, -30.0], [0, -0.8, 0, 20.0], [0, 0, 2.5, -5.0], [0, 0, 0, 1]])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "models" / "model.pt"))
    parser.add_argument("--image", default=None, help="a NIfTI file (default: a generated phantom)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the config's 50)")
    args = parser.parse_args()

    import monai.bundle
    import monailabel
    import nibabel as nib
    import SimpleITK as sitk
    from monailabel.tasks.infer.bundle import BundleInferTask

    root = Path(tempfile.mkdtemp(prefix="ctv2v_label_"))
    folder = label_model_folder(root, Path(args.model), args.steps)
    image = Path(args.image).resolve() if args.image else phantom_image(root / "studies" / "ct.nii.gz")
    server = root / "server"
    server.mkdir()
    with contextlib.chdir(server):  # MONAI Label runs from its own working directory
        task = BundleInferTask(str(folder), {})
        if not task.is_valid():
            sys.exit(f"MONAI Label did not accept {folder} (see its log above)")
        result_file, result_json = task({"image": str(image), "device": "cpu"})

    result, source = sitk.ReadImage(str(result_file)), sitk.ReadImage(str(image))
    pred = sitk.GetArrayFromImage(result).transpose(2, 1, 0)  # (i, j, k) like nibabel
    out = root / "bundle_run"
    monai.bundle.run("inference", config_file=str(folder / "configs" / "inference.yaml"), bundle_root=str(folder),
                     input_dir=str(image.parent), output_dir=str(out), device="$torch.device('cpu')")
    name = image.name.split(".")[0]
    reference = np.asanyarray(nib.load(str(out / f"{name}_enhanced.nii.gz")).dataobj)
    print(f"monailabel {monailabel.__version__}: task type {task.type}, labels {task.labels}")
    print(f"result {result_file}: dtype {pred.dtype}, shape {pred.shape} (input {source.GetSize()}), "
          f"latencies {result_json.get('latencies', {}).get('total')} s")
    print("same spacing, origin, direction as the input:",
          np.allclose(result.GetSpacing(), source.GetSpacing()) and np.allclose(result.GetOrigin(), source.GetOrigin())
          and np.allclose(result.GetDirection(), source.GetDirection()))
    print(f"max |MONAI Label - monai.bundle run inference| = {np.abs(pred - reference).max():.4f} HU")


if __name__ == "__main__":
    main()
