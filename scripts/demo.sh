#!/usr/bin/env bash
# The README's main job on a fresh machine (after `pip install -e .`):
#   1. generate the synthetic demo CT pairs (NIfTI + DICOM) in data/demo
#   2. train the demo-sized model with the real recipe (VAE, phase 1, phase 2) -> models/model.pt
#   3. enhance the demo DICOM series with the radiologists' batch tool -> outputs/demo
#   4. draw a before/after picture
# Re-running resumes or skips whatever is already done. A GPU is used when present.
set -euo pipefail
cd "$(dirname "$0")/.."

ctv2v demo-data data/demo
python -m monai.bundle run training --config_file "['configs/train.yaml','configs/demo.yaml']"
ctv2v enhance data/demo/dicom outputs/demo --model models/model.pt --format both
python scripts/before_after.py data/demo/dicom outputs/demo outputs/demo/before_after.png

echo
echo "Enhanced DICOM series and NIfTI: outputs/demo (summary: outputs/demo/summary.csv)"
echo "Before/after picture:            outputs/demo/before_after.png"
