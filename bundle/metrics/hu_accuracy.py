"""HU accuracy per material: bias (mean error) and RMSE of an output in each tissue class.

Averages over a whole volume hide harm: a method can win PSNR while it moves bone by tens of HU.
Classes come from a label map where the simulation has one (the demo phantoms), else from the
reference's own HU (ranges with gaps between them, so partial-volume voxels at boundaries count
for no class). Masks are eroded by one pixel in-plane: a class's bias should not be its edges'
blur.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

__all__ = ["HU_CLASSES", "class_masks", "hu_accuracy"]

# reference-HU ranges of the tissue classes (lower inclusive, upper exclusive)
HU_CLASSES: dict[str, tuple[float, float]] = {
    "air": (-np.inf, -950.0),
    "lung": (-950.0, -500.0),
    "fat": (-200.0, -50.0),
    "soft tissue": (-20.0, 120.0),
    "bone": (300.0, np.inf),
}


def class_masks(reference_hu: np.ndarray, labels: np.ndarray | None = None,
                label_classes: Mapping[str, list[int]] | None = None, erode: int = 1) -> dict[str, np.ndarray]:
    """``{class: mask}`` for a ``(slices, rows, cols)`` reference volume.

    With ``labels`` and ``label_classes`` (class -> label values) the classes are the labels';
    otherwise :data:`HU_CLASSES` on ``reference_hu``. Empty classes are left out.
    """
    reference_hu = np.asarray(reference_hu)
    if labels is not None and label_classes is not None:
        labels = np.asarray(labels)
        masks = {name: np.isin(labels, values) for name, values in label_classes.items()}
    else:
        masks = {name: (reference_hu >= lo) & (reference_hu < hi) for name, (lo, hi) in HU_CLASSES.items()}
    if erode:
        structure = np.zeros((3, 3, 3), bool) if reference_hu.ndim == 3 else None
        if structure is not None:
            structure[1] = ndimage.generate_binary_structure(2, 1)
        masks = {k: ndimage.binary_erosion(m, structure=structure, iterations=erode) for k, m in masks.items()}
    return {k: m for k, m in masks.items() if m.any()}


def hu_accuracy(pred_hu: np.ndarray, reference_hu: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """``{class: {"bias": HU, "rmse": HU, "voxels": n}}`` of ``pred - reference`` in each mask."""
    error = np.asarray(pred_hu, dtype=np.float64) - np.asarray(reference_hu, dtype=np.float64)
    out = {}
    for name, mask in masks.items():
        values = error[np.asarray(mask, bool).reshape(error.shape)]
        out[name] = {"bias": float(values.mean()), "rmse": float(np.sqrt((values**2).mean())), "voxels": int(values.size)}
    return out
