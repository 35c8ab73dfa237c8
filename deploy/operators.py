"""The app's own operators (MONAI Deploy App SDK 4.0, on Holoscan).

The SDK's ``MonaiBundleInferenceOperator`` casts outputs declared as images to uint8, which
destroys HU, and the SDK has no DICOM image-series writer; these two operators replace them. Each
passes the SDK's objects to :mod:`bundle.inference.deploy`, the code the batch tool shares, so the
app writes the same DICOM as ``ctv2v enhance``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

from bundle.inference.deploy import (
    enhance_series,
    load_bundle_network,
    write_enhanced_series,
)

logger = logging.getLogger(__name__)


def selected_series_files(study_selected_series_list) -> list[Path]:
    """The files of the first selected series (the SDK's loader reads each with ``dcmread``,
    which keeps the file name)."""
    if not study_selected_series_list or not study_selected_series_list[0].selected_series:
        raise ValueError("no series matched the selection rules (CT, axial, ORIGINAL, not DERIVED or LOCALIZER)")
    series = study_selected_series_list[0].selected_series[0].series
    files = []
    for sop in series.get_sop_instances():
        name = getattr(sop.get_native_sop_instance(), "filename", None)
        if not name:
            raise ValueError(f"series {series.SeriesInstanceUID}: an instance was not read from a file")
        files.append(Path(name))
    return files


class CTEnhanceOperator(Operator):
    """Selected series (+ the SDK's volume of it) -> enhanced HU, float, in the series' slice order.

    Named inputs: ``study_selected_series_list`` (from the series selector), ``image`` (from
    ``DICOMSeriesToVolumeOperator``). Named output: ``enhanced``, a dict with the validated
    volume, the enhanced HU and the recorded settings.
    """

    def __init__(self, fragment: Fragment, *args, bundle_root: Path, model_path: Path | None = None,
                 device: str = "auto", **kwargs):
        self.bundle_root = Path(bundle_root)
        self.model_path = model_path
        self.device = device
        self.network = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("study_selected_series_list")
        spec.input("image")
        spec.output("enhanced").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context):
        from bundle.inference.batch.run import model_version_of

        selection = op_input.receive("study_selected_series_list")
        image = op_input.receive("image")
        if self.network is None:  # loaded once, on the first series
            import torch

            device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
            self.network, model_path = load_bundle_network(self.bundle_root, self.model_path, device)
            self.model_version = model_version_of(model_path)
        files = selected_series_files(selection)
        voxels = image.asnumpy() if image is not None else None
        volume, hu, settings = enhance_series(self.network, files, voxels)
        logger.info("enhanced series %s: %d slices", volume.series_uid, hu.shape[0])
        op_output.emit({"volume": volume, "hu": hu, "settings": settings, "model_version": self.model_version},
                       "enhanced")


class DerivedCTSeriesWriterOperator(Operator):
    """Enhanced HU -> a derived CT series (the batch tool's writer) under ``output_folder``."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs):
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("enhanced")

    def compute(self, op_input, op_output, context):
        result = op_input.receive("enhanced")
        folder = write_enhanced_series(result["hu"], result["volume"], self.output_folder,
                                       settings=result["settings"], model_version=result["model_version"])
        logger.info("wrote %s", folder)
