"""What the MONAI Deploy application (``deploy/``) does, without the SDK.

The app's operators are thin: they pass the SDK's objects to these functions, so the work is
tested where ``monai-deploy-app-sdk`` cannot be installed, and is the batch tool's own:

- :func:`load_bundle_network`: ``network_def`` of ``configs/inference.yaml`` with the model file,
  as MONAI Deploy's bundle operator builds a bundle's network;
- :func:`enhance_series`: the series read and validated by :func:`bundle.dicom.read_series`
  (the SDK's volume, when given, must hold the same HU: a check, not a second code path), then
  enhanced in the networks' orientation exactly as ``ctv2v enhance`` does;
- :func:`write_enhanced_series`: the derived CT series written by the batch tool's writer into a
  staging folder that is renamed when complete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bundle.dicom.volume import CTVolume

CONFIG = Path("configs") / "inference.yaml"


def load_bundle_network(bundle_root: str | os.PathLike, model_path: str | os.PathLike | None = None,
                        device: str = "cpu", **settings: Any):
    """``network_def`` of the bundle's ``configs/inference.yaml`` (a ``CTEnhancer`` built from the
    model file), on ``device``, in eval mode. ``settings`` override the config's sampler ids
    (``num_inference_steps``, ``seed``, ...)."""
    import torch
    from monai.bundle import ConfigParser

    bundle_root = Path(bundle_root)
    config_file = bundle_root / CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: bundle_root must be the bundle's folder")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(bundle_root)
    if model_path is not None:
        parser["model_path"] = str(model_path)
    for key, value in settings.items():
        if key not in parser:
            raise KeyError(f"{key!r} is not a setting of {config_file}")
        parser[key] = value
    network = parser.get_parsed_content("network_def")
    return network.to(torch.device(device)).eval(), parser.get_parsed_content("model_path")


def run_settings(enhancer) -> dict:
    """The settings a run of ``enhancer`` records: its own sampler settings, in the dict the batch
    tool writes (so a series enhanced by either path carries the same tags)."""
    from bundle.inference.batch.run import recorded_settings

    return recorded_settings(enhancer, steps=enhancer.num_inference_steps, eta=enhancer.eta,
                             strength=enhancer.strength, num_samples=enhancer.num_samples, seed=enhancer.seed)


def enhance_series(enhancer, files: Sequence[str | os.PathLike], voxels: np.ndarray | None = None
                   ) -> tuple[CTVolume, np.ndarray, dict]:
    """Read the series of ``files`` and enhance it: ``(volume, enhanced HU in volume.hu's order,
    settings)``.

    ``voxels``: the SDK's volume of the same series (``DICOMSeriesToVolumeOperator``'s image,
    slices x rows x columns); it must equal what :func:`bundle.dicom.read_series` reads, since the
    derived series is written slice for slice against the files' headers.
    """
    from bundle.dicom import read_series
    from bundle.inference.batch.run import enhance_volume

    volume = read_series([Path(f) for f in files])
    if voxels is not None:
        voxels = np.asarray(voxels)
        where = f"series {volume.series_uid} ({len(volume.slice_files)} files)"
        if voxels.shape != volume.hu.shape:
            raise ValueError(f"{where}: the SDK volume has shape {voxels.shape}, the files {volume.hu.shape}")
        difference = np.abs(voxels.astype(np.float32) - volume.hu)
        if volume.padding is not None:  # outside the field of view the reader puts air, the SDK the fill value
            difference[volume.padding] = 0
        if difference.max() > 1e-3:
            worst = np.unravel_index(np.argmax(difference), difference.shape)
            raise ValueError(f"{where}: the SDK volume differs from the files by up to {difference.max():.3g} HU "
                             f"(slice, row, column {tuple(int(i) for i in worst)}): slice order or rescale differ")
    settings = run_settings(enhancer)
    hu, _ = enhance_volume(enhancer, volume, settings)
    return volume, hu, settings


def write_enhanced_series(hu: np.ndarray, volume: CTVolume, output_dir: str | os.PathLike, *, settings: dict,
                          model_version: str, software_version: str | None = None) -> Path:
    """Write the derived CT series into ``output_dir/<series number>_<description>_<uid hash>``
    (the batch tool's writer and naming), through a staging folder renamed when complete.
    An existing complete folder is an error: nothing is overwritten."""
    import bundle
    from bundle.dicom.derived import write_derived_series
    from bundle.inference.batch.outputs import (
        PARTIAL_SUFFIX,
        SeriesRow,
        series_folder_name,
    )
    from bundle.utils.names import uid_hash

    software_version = software_version or f"ctv2v {bundle.__version__}"
    reference = volume.reference
    row = SeriesRow(index=1, kind="dicom", series_uid_hash=uid_hash(volume.series_uid),
                    series_number=str(reference.get("SeriesNumber", "") or ""))
    name = series_folder_name(row, str(reference.get("SeriesDescription", "") or ""))  # the batch tool's naming
    output_dir = Path(output_dir)
    folder = output_dir / name
    if folder.exists():
        raise FileExistsError(f"{folder} exists: move it away to write this series again")
    staging = folder.with_name(folder.name + PARTIAL_SUFFIX)
    if staging.exists():
        shutil.rmtree(staging)  # an interrupted earlier attempt
    staging.mkdir(parents=True)
    try:
        write_derived_series(hu, volume, staging, settings=settings, model_version=model_version,
                             software_version=software_version)
        os.replace(staging, folder)  # the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
