"""Lesion insertion (bundle/data/lesions.py): the same faint spheres in source and target, in soft
tissue only, sized in mm from the crop's own voxel spacing, reproducible per seed, and off by
default in the training chain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.data.lesions import RandLesionInsertd
from tests.data.test_transforms import body_volume, chain, hu, write

SPACING = (2.0, 0.5, 0.5)  # (slice, row, column) mm: anisotropic, so a sphere in voxels would show


def volume(values: np.ndarray, spacing=SPACING) -> MetaTensor:
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(torch.as_tensor(values, dtype=torch.float32)[None], affine=affine)


def pair(seed: int = 0, shape=(12, 48, 48), level: float = 60.0):
    rng = np.random.default_rng(seed)
    target = level + rng.normal(0, 5, shape)
    source = target + rng.normal(0, 20, shape)
    return {"source": volume(source), "target": volume(target)}


def insert(data, seed: int = 0, **kwargs):
    transform = RandLesionInsertd(["source", "target"], **{"prob": 1.0, **kwargs})
    transform.set_random_state(seed=seed)
    return transform({key: value.clone() for key, value in data.items()})


def test_the_same_lesions_go_into_source_and_target():
    data = pair()
    out = insert(data, num_lesions=(3, 3))
    added_target = (out["target"] - data["target"]).as_tensor()
    added_source = (out["source"] - data["source"]).as_tensor()
    assert (added_target.abs() > 1).sum() > 50  # something was inserted
    torch.testing.assert_close(added_source, added_target, atol=1e-4, rtol=0)
    assert added_target.abs().max() <= 3 * 25 + 1e-3  # three lesions of at most 25 HU, possibly overlapping
    assert isinstance(out["source"], MetaTensor)
    np.testing.assert_allclose(out["source"].affine, data["source"].affine)


def test_a_lesion_is_a_sphere_in_mm_with_the_drawn_contrast():
    """The crop's spacing comes from its metadata: 6 mm radius = 3 slices, 12 rows, 12 columns."""
    checked = 0
    for seed in range(30):
        data = pair(seed, shape=(20, 80, 80))
        out = insert(data, seed=seed, num_lesions=(1, 1), radius_mm=(6.0, 6.0), contrast_hu=(10.0, 10.0))
        added = (out["target"] - data["target"]).as_tensor()[0].numpy()
        weight = np.abs(added)
        peak = tuple(int(round(float((weight * np.indices(added.shape)[axis]).sum() / weight.sum())))
                     for axis in range(3))  # the sphere's centre
        np.testing.assert_allclose(np.abs(added[peak]), 10.0, atol=1e-4)
        inside = [3 <= peak[0] <= 16, 12 <= peak[1] <= 67, 12 <= peak[2] <= 67]
        if not all(inside):
            continue  # a sphere cut by the crop's border
        checked += 1
        voxel_mm3 = float(np.prod(SPACING))
        volume_mm3 = np.abs(added).sum() / 10.0 * voxel_mm3
        assert volume_mm3 == pytest.approx(4 / 3 * math.pi * 6.0**3, rel=0.1)
        # along each axis the lesion spans its radius in that axis's voxels
        profile = np.abs(added[peak[0], peak[1], :]) > 5
        assert profile.sum() == pytest.approx(2 * 6.0 / SPACING[2], abs=1)
        assert (np.abs(added[:, peak[1], peak[2]]) > 5).sum() == pytest.approx(2 * 6.0 / SPACING[0], abs=1)
    assert checked >= 5


def test_lesions_stay_in_soft_tissue():
    """Half the crop is bone (1000 HU): nothing is painted there, nor a lesion centred there."""
    data = pair(shape=(8, 32, 64))
    data["target"][..., 32:] = 1000.0
    data["source"][..., 32:] = 1000.0
    for seed in range(10):
        out = insert(data, seed=seed, num_lesions=(3, 3))
        added = (out["target"] - data["target"]).as_tensor()[0]
        assert added[..., 32:].abs().max() == 0
        assert added[..., :32].abs().max() >= 3.0


def test_no_soft_tissue_or_prob_zero_leaves_the_crop_as_it_was():
    air = {key: volume(np.full((4, 16, 16), -1000.0)) for key in ("source", "target")}
    out = insert(air)
    assert torch.equal(out["source"].as_tensor(), air["source"].as_tensor())
    data = pair()
    out = insert(data, prob=0.0)
    assert torch.equal(out["target"].as_tensor(), data["target"].as_tensor())


def test_draws_are_reproducible_per_seed_and_differ_between_seeds():
    data = pair()
    first, again, other = insert(data, seed=3), insert(data, seed=3), insert(data, seed=4)
    assert torch.equal(first["target"].as_tensor(), again["target"].as_tensor())
    assert not torch.equal(first["target"].as_tensor(), other["target"].as_tensor())


def test_the_mask_covers_every_painted_voxel_and_a_rim_and_is_zero_without_lesions():
    data = pair()
    out = insert(data, num_lesions=(2, 2), mask_key="lesion", mask_margin_voxels=2.0)
    painted = ((out["target"] - data["target"]).as_tensor().abs() > 1e-4)[0]
    where = out["lesion"]
    assert where.shape == (1, *painted.shape) and where.dtype == torch.float32
    assert set(torch.unique(where).tolist()) == {0.0, 1.0}
    assert bool(where[0][painted].eq(1).all())
    # the rim: 2 in-plane voxels beyond the sphere's edge, so at least a 3x3 in-plane dilation of it
    dilated = torch.nn.functional.max_pool3d(painted[None, None].float(), (1, 3, 3), stride=1, padding=(0, 1, 1))[0]
    assert bool(where[dilated.bool()].eq(1).all()) and where.sum() > dilated.sum()
    assert not insert(data, mask_key="lesion")["lesion"].equal(torch.zeros_like(where))
    for empty in (insert(data, prob=0.0, mask_key="lesion"), insert(data, num_lesions=(0, 0), mask_key="lesion"),
                  insert(pair(level=-800.0), mask_key="lesion")):  # no soft tissue
        assert empty["lesion"].shape == where.shape and not empty["lesion"].any()
    # the map does not change the draws: the same lesions with or without it
    torch.testing.assert_close(insert(data, num_lesions=(2, 2))["target"].as_tensor(), out["target"].as_tensor())


def test_the_plain_source_is_the_crop_before_its_lesions():
    # for a loss on the network's response to the lesions alone: the same noise, without them
    data = pair()
    out = insert(data, num_lesions=(2, 2), plain_key="source_plain")
    torch.testing.assert_close(out["source_plain"].as_tensor(), data["source"].as_tensor())
    torch.testing.assert_close((out["source"] - out["source_plain"]).as_tensor(), (out["target"] - data["target"]).as_tensor())
    assert (out["source"] - out["source_plain"]).abs().max() > 2.0
    # no lesions drawn: still there (a batch collates), equal to the source
    empty = insert(data, prob=0.0, plain_key="source_plain")
    torch.testing.assert_close(empty["source_plain"].as_tensor(), empty["source"].as_tensor())
    torch.testing.assert_close(insert(data, num_lesions=(2, 2))["source"].as_tensor(), out["source"].as_tensor())


def test_bad_settings_and_mismatched_grids_say_what_is_wrong():
    with pytest.raises(ValueError, match="radius_mm"):
        RandLesionInsertd(["source", "target"], radius_mm=(10.0, 2.0))
    data = pair()
    data["source"] = volume(np.zeros((12, 48, 40)))
    with pytest.raises(ValueError, match="source has shape"):
        insert(data)


@pytest.mark.parametrize("lesion_insertion", [0.0, 1.0])
def test_training_chain_keeps_pairs_aligned_with_lesions_on_or_off(tmp_path, lesion_insertion):
    """configs/common.yaml's chain: off by default; on, crops change but target - source does not."""
    vol = np.clip(body_volume(1), -1017, 3000)
    source = write(tmp_path / "p_source.nii.gz", vol)
    target = write(tmp_path / "p_target.nii.gz", vol + 7)
    plain = chain("train_transforms", train_patch_size=[4, 32, 32])
    lesioned = chain("train_transforms", train_patch_size=[4, 32, 32], lesion_insertion=lesion_insertion)
    changed = 0
    for seed in range(10):
        plain.set_random_state(seed=seed)
        lesioned.set_random_state(seed=seed)
        reference = plain({"source": source, "target": target})
        item = lesioned({"source": source, "target": target})
        np.testing.assert_allclose(hu(item["target"]) - hu(item["source"]), 7.0, atol=0.01)
        changed += not np.allclose(hu(item["target"]), hu(reference["target"]), atol=0.01)
        # the map of where lesions went, and the source without them, come along only when there are lesions
        assert ("lesion" in item) == ("source_plain" in item) == (lesion_insertion > 0)
        if lesion_insertion > 0:
            # window channels like the source's, with the lesions' difference only
            assert item["source_plain"].shape == item["source"].shape
            np.testing.assert_allclose(hu(item["source_plain"]), hu(reference["source"]), atol=0.01)
            painted = np.abs(hu(item["target"]) - hu(reference["target"])) > 0.01
            assert item["lesion"].shape == (1, 4, 32, 32) and painted.any()
            assert (item["lesion"][0].numpy()[painted] == 1).all()
    assert changed == (0 if lesion_insertion == 0 else 10)
