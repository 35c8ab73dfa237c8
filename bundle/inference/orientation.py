"""The networks' array layout for a volume read from DICOM or NIfTI, and back.

Training sees volumes through ``Orientationd(axcodes="SPL")`` (``configs/common.yaml``): slices
inferior to superior, rows anterior to posterior, columns patient right to left. The batch tool
must hand the network the same array for the same scan, so it uses the same MONAI transform on
the same RAS affine, and MONAI's own inverse of it to put the result back on the scan's grid.
(It used to do this with its own permutation maths; ``tests/inference/test_orientation.py``
checks that the two chains agree.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation

__all__ = ["NETWORK_AXCODES", "network_layout"]

NETWORK_AXCODES = "SPL"


def network_layout(volume) -> tuple[torch.Tensor, Callable[[torch.Tensor], np.ndarray]]:
    """``volume`` (a :class:`bundle.dicom.CTVolume`) as the networks' ``(S, P, L)`` float32 tensor,
    and a function that puts any array of that shape back in the volume's ``[k, j, i]`` order."""
    orientation = Orientation(axcodes=NETWORK_AXCODES, labels=None)  # labels from the affine's space (RAS)
    image = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(volume.hu_ijk, dtype=np.float32))[None],
        affine=torch.as_tensor(volume.affine_ras, dtype=torch.float64),
    )
    oriented = orientation(image)

    def back(array: torch.Tensor) -> np.ndarray:
        traced = MetaTensor(torch.as_tensor(array)[None], affine=oriented.affine,
                            applied_operations=list(oriented.applied_operations))
        restored = orientation.inverse(traced)
        return np.ascontiguousarray(restored.as_tensor()[0].numpy().transpose(2, 1, 0))

    return oriented.as_tensor()[0], back
