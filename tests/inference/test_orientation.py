"""The batch tool hands the network the array the training chain gives for the same scan
(MONAI's Orientation "SPL"), and puts the output back on the scan's own grid exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, Orientationd

from bundle.data.transforms import LoadCTd
from bundle.data.volume_io import save_ct_nifti, volume_from_array
from bundle.inference.orientation import network_layout

C, S = np.cos(0.3), np.sin(0.3)
DIRECTIONS = {  # LPS unit vectors along i, j, k as columns
    "axial": np.eye(3),
    "rows and columns flipped": np.diag([-1.0, -1.0, 1.0]),
    "slices descending": np.diag([1.0, 1.0, -1.0]),
    "transposed in-plane, slices descending": np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]]),
    "coronal-like": np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]]),
    "oblique 17 degrees": np.array([[C, -S, 0], [S, C, 0], [0, 0, 1]]),
}


def volume(direction, spacing=(2.5, 0.7, 0.8)):
    hu = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = np.asarray(direction) @ np.diag([spacing[2], spacing[1], spacing[0]])
    affine_lps[:3, 3] = (10.0, -20.0, 30.0)
    return volume_from_array(hu, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_round_trip_is_exact_and_points_superior_posterior_left(name):
    direction = DIRECTIONS[name]
    vol = volume(direction)
    spl, back = network_layout(vol)
    np.testing.assert_array_equal(back(spl), vol.hu)
    # the voxel that is most superior-posterior-left in patient space is spl[-1, -1, -1]
    k, j, i = np.meshgrid(*(np.arange(n) for n in vol.hu.shape), indexing="ij")
    lps = direction @ np.stack([i.ravel(), j.ravel(), k.ravel()])
    score = lps[0] + lps[1] + lps[2]  # +x left, +y posterior, +z superior
    if name != "oblique 17 degrees":  # ties along the rotated axes: the corner test needs axis-aligned
        assert float(spl[-1, -1, -1]) == vol.hu.ravel()[np.argmax(score)]


@pytest.mark.parametrize("name", DIRECTIONS)
def test_the_network_sees_what_training_sees(name, tmp_path):
    """The same scan through the training chain (configs/common.yaml: load, channel first,
    Orientationd SPL) and through the batch tool's layout gives the same array."""
    vol = volume(DIRECTIONS[name])
    path = save_ct_nifti(vol, tmp_path / "scan.nii.gz")
    chain = Compose([LoadCTd(keys="image"), EnsureChannelFirstd(keys="image"),
                     Orientationd(keys="image", axcodes="SPL", labels=None)])
    trained_on = chain({"image": str(path)})["image"].as_tensor()[0]
    spl, _ = network_layout(vol)
    assert torch.equal(spl, trained_on)
