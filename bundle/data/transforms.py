"""Transforms for ``source``/``target`` CT pairs, and the dataset factory the configs use.

The chains themselves are declared in ``configs/common.yaml`` (``train_transforms``,
``val_transforms``, ``preprocessing``); this module holds the few pieces MONAI does not have.

Array convention after the chains (the networks' layout, batch axis added by the loader)::

    (C, S, H, W) = (channel, slice, row, column)

``C`` is one HU channel after ``val_transforms`` / ``preprocessing`` (whole volumes for
``CTEnhancer``, which windows and tiles them itself) and one channel per HU window after
``train_transforms`` (crops for the networks).

* ``S``: axial slices, ordered inferior -> superior (feet to head);
* ``H``: image rows, top to bottom = anterior -> posterior;
* ``W``: image columns, left to right = patient right -> patient left.

So ``volume[c, s]`` is an axial slice as radiologists view it (from the feet, patient's right on
the viewer's left, anterior up), the same pixel layout as a standard axial DICOM image. In MONAI
terms this is ``Orientationd(axcodes="SPL")`` (each letter names the direction its axis
increases towards): one transform puts the slice axis first *and* fixes the anatomical
direction of every axis, and it updates the affine, so a saved output still lands in the right
place and ``Invertd`` can undo it. (A plain transpose after ``Orientationd("RAS")`` would leave
the affine describing the old axis order.) :data:`CT_AXCODES` is that string.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import CacheDataset, Dataset, ImageReader, NibabelReader, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import LoadImaged, MapTransform, RandCropByPosNegLabeld
from monai.utils import convert_to_dst_type, ensure_tuple

from bundle.data.volume_io import is_nifti

__all__ = [
    "BODY_HU",
    "CT_AXCODES",
    "BodyMaskd",
    "CTImageReader",
    "LoadCTd",
    "RandBodyCropd",
    "SameGridd",
    "make_dataset",
]

CT_AXCODES = "SPL"  # (S, H, W) = (inferior->superior, anterior->posterior, right->left)
BODY_HU = -500.0  # body mask threshold: above air and most lung, below fat and soft tissue

class CTImageReader(ImageReader):
    """A MONAI reader for both forms a CT comes in: NIfTI files and DICOM series folders.

    NIfTI files go to MONAI's :class:`~monai.data.NibabelReader`; a folder goes to
    ``bundle.dicom.CTSeriesReader``, imported on first use (so NIfTI-only work never depends on
    the DICOM stack). Both give the affine in the same (RAS) convention, so the orientation
    transforms that follow treat them alike. Values are HU as stored (NIfTI scaling applied;
    DICOM rescale slope/intercept applied by ``CTSeriesReader``).
    """

    def __init__(self, **nifti_kwargs):
        super().__init__()
        self.nifti = NibabelReader(**nifti_kwargs)
        self._dicom: ImageReader | None = None

    @property
    def dicom(self) -> ImageReader:
        if self._dicom is None:
            try:
                from bundle.dicom import CTSeriesReader
            except ImportError as error:
                raise RuntimeError(
                    f"reading a DICOM series folder needs bundle.dicom.CTSeriesReader, which failed to import: {error}"
                ) from error
            self._dicom = CTSeriesReader()
        return self._dicom

    def verify_suffix(self, filename) -> bool:
        paths = [str(p) for p in ensure_tuple(filename)]
        return bool(paths) and all(os.path.isdir(p) or is_nifti(p) for p in paths)

    def _reader_for(self, data) -> ImageReader:
        paths = [str(p) for p in ensure_tuple(data)]
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"CT image not found: {path}")
        if all(os.path.isdir(p) for p in paths):
            return self.dicom
        if all(os.path.isfile(p) and is_nifti(p) for p in paths):
            return self.nifti
        raise ValueError(f"expected NIfTI files (.nii, .nii.gz) or DICOM series folders, got {paths}")

    def read(self, data, **kwargs):
        reader = self._reader_for(data)
        return reader, reader.read(data, **kwargs)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        reader, native = img
        return reader.get_data(native)


class LoadCTd(LoadImaged):
    """``LoadImaged`` that reads with :class:`CTImageReader` and nothing else.

    A plain ``LoadImaged(reader=...)`` silently retries with MONAI's other readers when the given
    one raises; for a DICOM folder that ``CTSeriesReader`` rejects (a missing slice, gantry tilt,
    two series) that fallback would load it anyway with unchecked geometry. Passing the reader
    at call time makes its error final. Output: float32 MetaTensor, no channel axis yet.
    """

    def __init__(self, keys: KeysCollection, dtype=np.float32, allow_missing_keys: bool = False):
        self.ct_reader = CTImageReader()
        super().__init__(
            keys, reader=self.ct_reader, dtype=dtype, image_only=True, allow_missing_keys=allow_missing_keys
        )

    def __call__(self, data, reader: ImageReader | None = None):
        return super().__call__(data, reader or self.ct_reader)


def _name(image) -> str:
    meta = getattr(image, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<unnamed>"))


class SameGridd(MapTransform):
    """Fail unless all ``keys`` share one voxel grid (spatial shape and affine).

    Paired crops and flips are index-based: a source and target on different grids would give
    misaligned pairs without any error. Run it after ``Orientationd``.
    """

    def __init__(self, keys: KeysCollection, atol_mm: float = 1e-3, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.atol_mm = atol_mm

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        first = d[keys[0]]
        for key in keys[1:]:
            other = d[key]
            if tuple(first.shape[1:]) != tuple(other.shape[1:]):
                raise ValueError(
                    f"{keys[0]} and {key} differ in shape: {tuple(first.shape[1:])} ({_name(first)}) vs "
                    f"{tuple(other.shape[1:])} ({_name(other)})"
                )
            affine_a, affine_b = getattr(first, "affine", None), getattr(other, "affine", None)
            if affine_a is not None and affine_b is not None:
                if not torch.allclose(affine_a.double(), affine_b.double(), atol=self.atol_mm, rtol=0):
                    raise ValueError(
                        f"{keys[0]} and {key} have different voxel grids (affines):\n{affine_a}\n({_name(first)})\n"
                        f"vs\n{affine_b}\n({_name(other)})"
                    )
        return d


class BodyMaskd(MapTransform):
    """``mask_key`` = (``keys`` > ``threshold`` HU), uint8, same shape: the body, for crop sampling.

    One key (the target: its low noise keeps the mask clean). Computed on HU, before windowing.
    """

    def __init__(self, keys: KeysCollection = "target", mask_key: str = "body", threshold: float = BODY_HU):
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"BodyMaskd takes one key, got {self.keys}")
        self.mask_key = mask_key
        self.threshold = float(threshold)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        image = d[self.keys[0]]
        plain = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        d[self.mask_key] = convert_to_dst_type(plain > self.threshold, image, dtype=torch.uint8)[0]
        return d


class RandBodyCropd(RandCropByPosNegLabeld):
    """One random crop of ``spatial_size``, the same for all ``keys``, centred in ``label_key``.

    ``RandCropByPosNegLabeld`` with ``num_samples=1`` that returns the sample as a dict instead of
    a list of one dict, so any ``DataLoader`` collates it (the list form needs MONAI's
    ``list_data_collate``). With ``pos=1, neg=0`` every crop centre is a voxel of the mask (the
    body), so no crop is mostly air; the mask itself is not cropped (delete it afterwards).
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: Sequence[int] | int,
        label_key: str = "body",
        pos: float = 1.0,
        neg: float = 0.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(
            keys, label_key, spatial_size, pos=pos, neg=neg, num_samples=1, allow_missing_keys=allow_missing_keys
        )

    def __call__(self, data, lazy: bool | None = None) -> dict:
        (sample,) = super().__call__(data, lazy=lazy)
        return sample


_CACHE_MODES = ("none", "memory", "disk")


def make_dataset(
    data: Sequence[dict],
    transform,
    cache: str = "none",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = 1,
) -> Dataset:
    """The dataset for a datalist, by cache mode (the ``cache`` config switch).

    * ``"none"``: :class:`~monai.data.Dataset`, every item read and transformed each time.
    * ``"memory"``: :class:`~monai.data.CacheDataset`, the deterministic head of ``transform``
      (up to the first random transform: loading, orientation, padding, body mask) computed once
      for ``cache_rate`` of the items and held in RAM (about 4 bytes/voxel + 1 for the mask, per key).
    * ``"disk"``: :class:`~monai.data.PersistentDataset` under ``cache_dir``. The cache key hashes
      the item (its paths) and the deterministic transforms, so changing e.g. the padding makes
      new entries instead of reusing stale ones. It does not hash file contents: delete
      ``cache_dir`` when files are rewritten in place (regenerated demo data), and to reclaim space.
    """
    mode = str(cache or "none").lower()
    if mode not in _CACHE_MODES:
        raise ValueError(f"cache must be one of {_CACHE_MODES}, got {cache!r}")
    data = list(data)
    if mode == "memory":
        return CacheDataset(data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=False)
    if mode == "disk":
        if not cache_dir:
            raise ValueError('cache: "disk" needs a cache_dir')
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(data, transform, cache_dir=cache_dir, hash_transform=pickle_hashing)
    return Dataset(data, transform)
