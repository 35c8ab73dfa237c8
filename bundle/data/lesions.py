"""Lesion insertion: faint synthetic lesions added to training crops, the same in source and target.

Why (docs/quality.md, "Why the d' stays under the full-dose scan's"): trained on the squared error,
the enhancer keeps under half of the demo test volume's liver-lesion contrast. The squared error's
optimum shrinks what the training data rarely shows, and the demo's eight training volumes hold
about thirty lesions. Inserting more faint lesions into the crops changes that prior, so the
optimum might keep a faint blob instead of smoothing it into the parenchyma. Measured with three
seeds at 0.5 (docs/quality.md, "Lesion insertion"): it does not (the same contrast kept, d' within
the seeds' spread), but it lowers the QA inserts' HU bias; the setting stays off by default.

Physics: a lesion of a few tens of HU changes attenuation by a few percent, so the quantum noise
around it barely changes; adding the same blob to the low-dose source and the full-dose target
(both in HU) is the pair a scan of the lesioned patient would give, to first order. Lesions are
placed in soft tissue only (``tissue_hu`` on the target), shaped as spheres in mm (the crop's
voxel spacing from its metadata) with a one-voxel linear edge, like the demo phantom's
scanner-blurred spheres.

With ``mask_key`` the transform also writes where it painted: each lesion with a rim of
``mask_margin_voxels`` (where a denoiser's blur spreads its contrast), 1 there and 0 elsewhere,
zeros for a crop without lesions. ``ReconstructionLoss``'s ``lesion`` term weighs the error there.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["RandLesionInsertd", "distance_mm", "sphere_profile"]


def _spacing(image) -> tuple[float, float, float]:
    """(slice, row, column) voxel size in mm of a (1, S, H, W) MetaTensor; 1 mm without metadata."""
    pixdim = getattr(image, "pixdim", None)
    if pixdim is None or len(pixdim) < 3:
        return (1.0, 1.0, 1.0)
    return tuple(float(p) for p in pixdim[:3])


def distance_mm(shape: Sequence[int], centre: Sequence[float], spacing: Sequence[float]) -> torch.Tensor:
    """Each voxel's distance in mm from voxel ``centre`` on an (S, H, W) grid of ``spacing`` mm (float32)."""
    squared = torch.zeros((), dtype=torch.float32)
    for axis, (size, middle, step) in enumerate(zip(shape, centre, spacing)):
        offset = (torch.arange(size, dtype=torch.float32) - float(middle)) * float(step)
        squared = squared + (offset ** 2).reshape([-1 if a == axis else 1 for a in range(3)])
    return squared.sqrt()


def sphere_profile(shape: Sequence[int], centre: Sequence[float], radius_mm: float, spacing: Sequence[float],
                   edge_mm: float) -> torch.Tensor:
    """A sphere of ``radius_mm`` at voxel ``centre`` on an (S, H, W) grid of ``spacing`` mm: 1 inside,
    0 outside, a linear edge ``edge_mm`` wide centred on the radius (float32)."""
    return ((radius_mm - distance_mm(shape, centre, spacing)) / edge_mm + 0.5).clamp(0.0, 1.0)


class RandLesionInsertd(RandomizableTransform, MapTransform):
    """With probability ``prob``, add ``num_lesions`` spheres of faint contrast to every key.

    Args:
        keys: the HU images to change (source and target), each (1, S, H, W) on one grid.
        reference_key: the image whose HU decides where soft tissue is (the target: least noise).
        prob: probability that a crop gets lesions (0 leaves every crop untouched).
        num_lesions: inclusive range of lesions per crop.
        radius_mm: range of sphere radii (the demo phantom's liver lesions: 2.5-10 mm).
        contrast_hu: range of |contrast|; the sign is drawn with even odds (hypo- or hyperdense).
        tissue_hu: HU range of the reference where a lesion may sit and where it is painted
            (soft tissue: fat, air, lung and bone are left as they are).
        edge_voxels: width of the linear edge, in in-plane voxels.
        mask_key: if set, the key of a (1, S, H, W) float32 map of where lesions were painted (with
            their rim), in every crop (zeros without lesions), for a loss that weighs them.
        mask_margin_voxels: the rim added to each sphere's radius in the map, in in-plane voxels.
        plain_key: if set, the key of a copy of the first key's image (the source) as it was before
            the lesions, in every crop: the input without them, for a loss on the network's response
            to the lesions alone (``ReconstructionLoss(transfer=...)``).
    """

    backend = [torch.Tensor]

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str = "target",
        prob: float = 0.0,
        num_lesions: Sequence[int] = (1, 3),
        radius_mm: Sequence[float] = (2.5, 10.0),
        contrast_hu: Sequence[float] = (3.0, 25.0),
        tissue_hu: Sequence[float] = (0.0, 150.0),
        edge_voxels: float = 1.0,
        mask_key: str | None = None,
        mask_margin_voxels: float = 2.0,
        plain_key: str | None = None,
        allow_missing_keys: bool = False,
    ):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        for name, pair in (("num_lesions", num_lesions), ("radius_mm", radius_mm), ("contrast_hu", contrast_hu),
                           ("tissue_hu", tissue_hu)):
            if len(pair) != 2 or pair[0] > pair[1]:
                raise ValueError(f"{name} must be a (low, high) range with low <= high, got {pair}")
        if num_lesions[0] < 0 or radius_mm[0] <= 0 or contrast_hu[0] < 0 or edge_voxels <= 0 or mask_margin_voxels < 0:
            raise ValueError("num_lesions, contrast_hu and mask_margin_voxels must be >= 0, radius_mm and edge_voxels > 0")
        self.reference_key = reference_key
        self.num_lesions = (int(num_lesions[0]), int(num_lesions[1]))
        self.radius_mm = (float(radius_mm[0]), float(radius_mm[1]))
        self.contrast_hu = (float(contrast_hu[0]), float(contrast_hu[1]))
        self.tissue_hu = (float(tissue_hu[0]), float(tissue_hu[1]))
        self.edge_voxels = float(edge_voxels)
        self.mask_key = mask_key
        self.mask_margin_voxels = float(mask_margin_voxels)
        self.plain_key = plain_key

    def lesion_map(self, reference: torch.Tensor, spacing: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The HU to add and the map of where (each sphere with its rim), both (1, S, H, W), drawn
        from this transform's state; None if no soft tissue."""
        plain = reference.as_tensor() if hasattr(reference, "as_tensor") else torch.as_tensor(reference)
        tissue = (plain[0] >= self.tissue_hu[0]) & (plain[0] <= self.tissue_hu[1])
        candidates = torch.nonzero(tissue)
        count = int(self.R.randint(self.num_lesions[0], self.num_lesions[1] + 1))
        if not len(candidates) or count == 0:
            return None
        added = torch.zeros(tissue.shape, dtype=torch.float32)
        where = torch.zeros(tissue.shape, dtype=torch.float32)
        edge_mm = self.edge_voxels * min(float(spacing[1]), float(spacing[2]))
        margin_mm = self.mask_margin_voxels * min(float(spacing[1]), float(spacing[2]))
        for _ in range(count):
            centre = candidates[int(self.R.randint(len(candidates)))].tolist()
            radius = float(self.R.uniform(*self.radius_mm))
            contrast = float(self.R.choice([-1.0, 1.0]) * self.R.uniform(*self.contrast_hu))
            added += contrast * sphere_profile(tissue.shape, centre, radius, spacing, edge_mm)
            if self.mask_key is not None:
                rim = sphere_profile(tissue.shape, centre, radius + margin_mm, spacing, edge_mm)
                where = torch.maximum(where, (rim > 0).float())
        return (added * tissue)[None], where[None]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize(None)
        reference = d[self.reference_key]
        drawn = self.lesion_map(reference, _spacing(reference)) if self._do_transform else None
        if self.mask_key is not None:
            # every crop carries the map (zeros without lesions) so that a batch collates
            d[self.mask_key] = drawn[1] if drawn is not None else torch.zeros((1, *reference.shape[1:]))
        if self.plain_key is not None:
            d[self.plain_key] = d[self.keys[0]]  # the lesions are added out of place below: this stays as it was
        if drawn is None:
            return d
        added = drawn[0]
        for key in self.key_iterator(d):
            if d[key].shape != reference.shape:
                raise ValueError(f"RandLesionInsertd: {key} has shape {tuple(d[key].shape)}, "
                                 f"{self.reference_key} {tuple(reference.shape)}; lesions need one grid")
            d[key] = d[key] + added.to(device=d[key].device, dtype=d[key].dtype)
        return d
