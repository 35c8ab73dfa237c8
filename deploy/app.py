"""MONAI Deploy application: a folder of DICOM files in, an enhanced (derived) CT series out.

    python deploy/app.py -i DICOM_FOLDER -o OUTPUT_FOLDER -m MODEL

MODEL is a model file (``models/model.pt``; the network comes from this repository's
``configs/inference.yaml``) or a bundle folder holding ``configs/inference.yaml`` and
``models/model.pt``. Pipeline: DICOM data loader -> series selector (CT, axial, ORIGINAL, not
DERIVED or LOCALIZER) -> series to volume -> CTEnhanceOperator (network_def, float HU) ->
DerivedCTSeriesWriterOperator (the batch tool's writer). docs/deployment.md: running, packaging.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout: the `bundle` package beside deploy/
    sys.path.insert(0, str(REPO))

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import (
    DICOMSeriesSelectorOperator,
)
from monai.deploy.operators.dicom_series_to_volume_operator import (
    DICOMSeriesToVolumeOperator,
)

from deploy.operators import CTEnhanceOperator, DerivedCTSeriesWriterOperator

# The series the model was trained on: original axial CT. Derived series (ours included), localizers
# (scouts) and reformats are not selected.
SELECTION_RULES = json.dumps({
    "selections": [{
        "name": "CT axial original",
        "conditions": {
            "Modality": "(?i)CT",
            "ImageType": ["ORIGINAL", "!DERIVED", "!LOCALIZER"],
            "ImageOrientationPatient": "Axial",
        },
    }]
})


def resolve_model(model_path: str | Path) -> tuple[Path, Path]:
    """``(bundle_root, model file)`` from the app's model path: a model file (the network from this
    checkout's configs), a bundle folder (``configs/inference.yaml``, ``models/model.pt``), or a
    MAP's models folder holding one such bundle folder."""
    path = Path(model_path)
    if path.is_file():
        return REPO, path
    if not path.is_dir():
        raise FileNotFoundError(f"model {path} not found")
    bundles = [path] if (path / "configs" / "inference.yaml").is_file() else [
        p for p in sorted(path.iterdir()) if (p / "configs" / "inference.yaml").is_file()]
    if len(bundles) != 1:
        raise FileNotFoundError(f"{path}: expected one bundle folder (configs/inference.yaml, models/model.pt), "
                                f"found {len(bundles)}")
    return bundles[0], bundles[0] / "models" / "model.pt"


class CTEnhanceApp(Application):
    """Low-dose CT in, enhanced derived CT series out."""

    def __init__(self, *args, device: str = "auto", **kwargs):
        self.device = device
        super().__init__(*args, **kwargs)

    def compose(self):
        app_context: AppContext = Application.init_app_context(self.argv)
        bundle_root, model_file = resolve_model(app_context.model_path)
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=Path(app_context.input_path),
                                         name="dicom_loader")
        selector = DICOMSeriesSelectorOperator(self, rules=SELECTION_RULES, name="series_selector")
        to_volume = DICOMSeriesToVolumeOperator(self, name="series_to_volume")
        enhance = CTEnhanceOperator(self, bundle_root=bundle_root, model_path=model_file, device=self.device,
                                    name="ct_enhance")
        writer = DerivedCTSeriesWriterOperator(self, output_folder=Path(app_context.output_path),
                                               name="derived_ct_writer")
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(selector, enhance, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, enhance, {("image", "image")})
        self.add_flow(enhance, writer, {("enhanced", "enhanced")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    CTEnhanceApp().run()
