"""The data chains of configs/common.yaml (paired crops, padding, orientation, caching) and the
inference preprocessing of configs/inference.yaml.

Volumes are built in the convention the chains produce, ``vol[s, h, w]`` = (slice inferior ->
superior, row anterior -> posterior, column patient right -> left), and written to NIfTI with
several storage orders and affines that all describe the same anatomy.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose, Invertd

from bundle.data.transforms import BodyMaskd, CTImageReader, LoadCTd, SameGridd, make_dataset
from bundle.data.windows import ChannelsToHUd, HUWindows

COMMON = Path(__file__).resolve().parents[2] / "configs" / "common.yaml"
INFERENCE = COMMON.with_name("inference.yaml")
SPACING = (2.5, 0.7, 0.8)  # (slice, row, column) mm; all different so a swapped axis shows
ORIGIN_RAS = np.array([40.0, 90.0, -300.0])  # RAS mm of vol[0, 0, 0]
SHAPE = (5, 48, 40)  # (S, H, W): fewer slices and a smaller plane than the default patch
WINDOWS = HUWindows()


def parser(**overrides) -> ConfigParser:
    config = ConfigParser()
    config.read_config(str(COMMON))
    for key, value in overrides.items():
        config[key] = value
    return config


def chain(name: str, **overrides):
    return parser(**overrides).get_parsed_content(name)


def inference_preprocessing():
    config = ConfigParser()
    config.read_config(str(INFERENCE))
    return config.get_parsed_content("preprocessing")


def spl_affine() -> np.ndarray:
    """RAS affine of an array indexed (s, h, w): s -> superior, h -> posterior, w -> left."""
    affine = np.eye(4)
    affine[:3, 0] = [0.0, 0.0, SPACING[0]]
    affine[:3, 1] = [0.0, -SPACING[1], 0.0]
    affine[:3, 2] = [-SPACING[2], 0.0, 0.0]
    affine[:3, 3] = ORIGIN_RAS
    return affine


def storage(vol: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """``vol`` (s, h, w) as a NIfTI array and affine with the same anatomy, in one of 3 layouts."""
    affine = spl_affine()
    if layout == "spl":  # slices first, as stored
        return vol, affine
    # DICOM-like (i, j, k) = (w, h, s): i -> left, j -> posterior, k -> superior ("LPS" voxel axes)
    data, affine = vol.transpose(2, 1, 0), affine[:, [2, 1, 0, 3]]
    if layout == "lps":
        return data, affine
    if layout == "ras":  # canonical: flip i and j so they run to the right and anterior
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:3, 3] = [data.shape[0] - 1, data.shape[1] - 1, 0]
        return data[::-1, ::-1, :].copy(), affine @ flip
    raise ValueError(layout)


def write(path: Path, vol: np.ndarray, layout: str = "lps") -> str:
    data, affine = storage(vol.astype(np.float32), layout)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def body_volume(seed: int = 0, shape=SHAPE) -> np.ndarray:
    """Air around an elliptic body of noisy soft tissue, a few lung and bone voxels."""
    rng = np.random.default_rng(seed)
    s, h, w = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    vol = np.full(shape, -1000.0, np.float32) + rng.normal(0, 20, shape)
    body = ((h - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + ((w - shape[2] / 2) / (shape[2] * 0.4)) ** 2 < 1
    vol[body] = rng.normal(40, 30, body.sum())
    vol[body & (w < shape[2] / 2) & (h < shape[1] / 2)] -= 800  # a lung-like quarter
    vol[:, shape[1] // 2, shape[2] // 2] = 900  # a bone line
    return vol.astype(np.float32)


def hu(channels: torch.Tensor) -> np.ndarray:
    return WINDOWS.to_hu(channels.as_tensor() if hasattr(channels, "as_tensor") else channels)[0].numpy()


def ops(image) -> list:
    """The operations recorded on a MetaTensor with their random parameters (object ids dropped)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "id"}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        return value

    return [repr(strip(op)) for op in image.applied_operations]


# --- training chain ----------------------------------------------------------------------------


def test_train_crops_of_a_volume_paired_with_itself_are_identical(tmp_path):
    path = write(tmp_path / "p1_source.nii.gz", body_volume())
    transforms = chain("train_transforms", train_patch_size=[4, 32, 32])
    transforms.set_random_state(seed=0)
    seen_ops = set()
    for _ in range(30):
        item = transforms({"source": path, "target": path})
        assert set(item) == {"source", "target"}  # the body mask is dropped after cropping
        source, target = item["source"], item["target"]
        assert source.shape == target.shape == (3, 4, 32, 32)
        assert source.dtype == torch.float32
        assert torch.equal(source, target)
        assert ops(source) == ops(target)
        seen_ops.add(tuple(ops(source)[2:]))
    # the draws really differ (crop position, flip, rotation), so equality above is a real check
    assert len(seen_ops) > 10


def test_train_crops_of_a_distinct_pair_stay_aligned(tmp_path):
    """Target = source + 7 HU everywhere: any misalignment breaks the difference."""
    vol = np.clip(body_volume(1), -1017, 3000)  # inside the full-range window, also after +7
    source = write(tmp_path / "p2_source.nii.gz", vol)
    target = write(tmp_path / "p2_target.nii.gz", vol + 7)
    transforms = chain("train_transforms", train_patch_size=[4, 32, 32])
    transforms.set_random_state(seed=1)
    for _ in range(20):
        item = transforms({"source": source, "target": target})
        difference = hu(item["target"]) - hu(item["source"])
        np.testing.assert_allclose(difference, 7.0, atol=0.01)


def test_small_volumes_are_padded_with_air_before_cropping(tmp_path):
    path = write(tmp_path / "small_source.nii.gz", body_volume(2))
    transforms = chain("train_transforms", train_patch_size=[8, 64, 64])
    transforms.set_random_state(seed=2)
    item = transforms({"source": path, "target": path})
    assert item["source"].shape == (3, 8, 64, 64)
    values = hu(item["source"])
    air = np.isclose(values, -1000, atol=0.01).mean()
    # 5 of 8 slices and 48x40 of 64x64 are data: at least the padding is exact air
    assert air >= 1 - (5 * 48 * 40) / (8 * 64 * 64) - 1e-6


def test_crops_are_drawn_from_the_body(tmp_path):
    vol = np.full(SHAPE, -1000.0, np.float32)
    vol[:, 2:8, 3:9] = 40.0  # a small body in one corner: 36 of 1920 in-plane voxels
    path = write(tmp_path / "corner_source.nii.gz", vol)
    transforms = chain("train_transforms", train_patch_size=[4, 16, 16])
    transforms.set_random_state(seed=3)
    with_body = 0
    for _ in range(40):
        item = transforms({"source": path, "target": path})
        with_body += bool((hu(item["target"]) > -500).any())
    # a uniformly placed 16x16 crop would contain this body in about 8 % of the draws
    assert with_body >= 36


# --- orientation ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["lps", "ras", "spl"])
def test_every_storage_order_loads_in_the_same_anatomical_layout(tmp_path, layout):
    vol = np.full(SHAPE, -1000.0, np.float32)
    marker = (4, 3, 5)  # top slice (superior), near the front (anterior), near the patient's right
    vol[marker] = 1000.0
    path = write(tmp_path / f"{layout}_source.nii.gz", vol, layout)
    item = inference_preprocessing()({"image": path})
    source = item["image"]
    assert source.shape == (1, *SHAPE)  # no padding: CTEnhancer pads to its own tiles
    assert source.dtype == torch.float32
    values = source[0].numpy()
    assert np.unravel_index(np.argmax(values), values.shape) == marker
    np.testing.assert_array_equal(values, vol)
    assert nib.aff2axcodes(source.affine.numpy()) == ("S", "P", "L")
    np.testing.assert_allclose(source.affine.numpy(), spl_affine(), atol=1e-4)


def test_postprocessing_restores_the_file_layout(tmp_path):
    vol = body_volume(4, shape=(5, 42, 37))  # not divisible by 8 in-plane
    path = write(tmp_path / "odd_source.nii.gz", vol, "ras")
    preprocessing = inference_preprocessing()
    item = preprocessing({"image": path})
    assert item["image"].shape == (1, 5, 42, 37)
    item["pred"] = WINDOWS.to_channels(item["image"])  # an identity "network" with window outputs
    post = Compose(
        [
            ChannelsToHUd(keys="pred", windows=parser()["hu_windows"]),
            Invertd(keys="pred", transform=preprocessing, orig_keys="image"),
        ]
    )
    restored = post(item)["pred"]
    stored, affine = storage(vol, "ras")
    assert restored.shape == (1, *stored.shape)
    np.testing.assert_allclose(restored[0].numpy(), np.clip(stored, -1024, 3072), atol=1e-3)
    np.testing.assert_allclose(restored.affine.numpy(), affine, atol=1e-4)


def test_val_keeps_the_scans_own_grid(tmp_path):
    """Validation and evaluation score the scan's own voxels: nothing is padded or cropped (the
    enhancer pads what its networks need itself)."""
    big = body_volume(5, shape=(11, 50, 41))
    source = write(tmp_path / "b_source.nii.gz", big)
    item = chain("val_transforms")({"source": source, "target": source})
    assert item["source"].shape == item["target"].shape == (1, 11, 50, 41)  # HU, for the validator
    np.testing.assert_array_equal(item["source"][0].numpy(), big)


def test_dicom_series_loads_like_its_nifti_twin(tmp_path):
    from bundle.dicom import write_ct_series

    vol = np.round(body_volume(6))
    vol[4, 3, 5] = 1000.0
    folder = tmp_path / "p3_source"
    # an axial series as scanners write it: columns -> L, rows -> P, slices -> S (LPS identity)
    origin_lps = (-ORIGIN_RAS[0], -ORIGIN_RAS[1], ORIGIN_RAS[2])
    write_ct_series(vol, folder, spacing=SPACING, origin=origin_lps, direction=np.eye(3), series_description="t")
    nifti = write(tmp_path / "p3_target.nii.gz", vol, "ras")
    item = chain("val_transforms")({"source": str(folder), "target": nifti})  # SameGridd passes
    np.testing.assert_array_equal(item["source"][0].numpy(), vol)
    assert torch.equal(item["source"].as_tensor(), item["target"].as_tensor())
    np.testing.assert_allclose(item["source"].affine.numpy(), item["target"].affine.numpy(), atol=1e-4)


def test_batches_from_a_plain_torch_dataloader(tmp_path):
    """configs/train.yaml uses torch's DataLoader (default collate): items must be dicts."""
    path = write(tmp_path / "t_source.nii.gz", body_volume(9))
    data = [{"source": path, "target": path}] * 2
    train = make_dataset(data, chain("train_transforms", train_patch_size=[4, 32, 32]))
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=2)))
    assert batch["source"].shape == batch["target"].shape == (2, 3, 4, 32, 32)
    val = make_dataset(data[:1], chain("val_transforms"))
    batch = next(iter(torch.utils.data.DataLoader(val, batch_size=1)))
    assert batch["source"].shape == (1, 1, 5, 48, 40)  # the scan's own grid


# --- pieces -------------------------------------------------------------------------------------


def test_mismatched_pair_is_an_error_naming_both_files(tmp_path):
    source = write(tmp_path / "m_source.nii.gz", body_volume(7))
    target = write(tmp_path / "m_target.nii.gz", body_volume(7, shape=(6, 48, 40)))
    load = Compose(chain("val_transforms").transforms[:3])
    with pytest.raises(ValueError, match="m_source.nii.gz"):
        SameGridd(keys=["source", "target"])(load({"source": source, "target": target}))


def test_loader_reports_a_missing_file_and_rejects_other_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        LoadCTd(keys="source")({"source": str(tmp_path / "nope.nii.gz")})
    other = tmp_path / "scan.mha"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="NIfTI"):
        LoadCTd(keys="source")({"source": str(other)})
    assert CTImageReader().verify_suffix(["a.nii.gz", str(tmp_path)])
    assert not CTImageReader().verify_suffix("a.mha")


def test_body_mask():
    image = torch.tensor([[[-1000.0, -600.0, -400.0, 50.0]]])
    mask = BodyMaskd(keys="target")({"target": image})["body"]
    assert mask.dtype == torch.uint8
    assert mask.tolist() == [[[0, 0, 1, 1]]]


@pytest.mark.parametrize(
    "cache, kind", [("none", Dataset), ("memory", CacheDataset), ("disk", PersistentDataset)]
)
def test_make_dataset(tmp_path, cache, kind):
    path = write(tmp_path / "d_source.nii.gz", body_volume(8))
    transform = chain("train_transforms", train_patch_size=[4, 32, 32])
    dataset = make_dataset(
        [{"source": path, "target": path}], transform, cache=cache, cache_dir=tmp_path / "cache"
    )
    assert type(dataset) is kind
    item = dataset[0]
    assert item["source"].shape == (3, 4, 32, 32)
    if cache == "disk":
        assert len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_make_dataset_rejects_bad_settings():
    with pytest.raises(ValueError, match="cache must be"):
        make_dataset([], None, cache="gpu")
    with pytest.raises(ValueError, match="cache_dir"):
        make_dataset([], None, cache="disk")
