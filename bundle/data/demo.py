"""A small synthetic dataset that exercises the whole bundle without real data.

:func:`make_demo_dataset` draws one phantom per patient (:mod:`bundle.data.phantom`), simulates
its low-dose / full-dose pair (:mod:`bundle.data.simulate`) and writes into OUT:

* ``<patient>_source.nii.gz`` / ``<patient>_target.nii.gz`` for every patient (``demo000``, ...);
* what the simulation knows, for every volume: ``<patient>_clean.nii.gz`` (the noise-free scan of
  the phantom, float32 HU: the truth, with the scanner's blur that source and target share;
  :func:`bundle.data.simulate.noise_free_scan`), ``<patient>_labels.nii.gz`` (uint8 tissue labels,
  :data:`bundle.data.phantom.LABELS`) and ``<patient>_objects.json`` (lesions and QA inserts:
  centre in voxels, radius in mm, contrast or nominal HU);
* for the test volumes also ``<patient>_target2.nii.gz`` (a second full-dose realisation: noise
  measured from a difference, no truth needed) and the sources of the dose sweep,
  ``<patient>_source_dose<d>.nii.gz`` for each of ``sweep_doses``;
* ``qa000``: an ACR/Catphan-like QA cylinder (:func:`bundle.data.phantom.make_qa_phantom`) in the
  test split, through the same dose pipeline;
* with ``qa_volumes`` N > 0, N more QA cylinders ``qa001``, ... drawn at random (other sizes,
  materials and layout than ``qa000``): the first in validation when N >= 2, the rest in
  training, so the model sees uniform regions and validation can see it fail on them. The
  patients, their split and every test file are the same as with N = 0;
* with ``qa_validation`` M > 0, M more random cylinders after those, all in validation: one
  cylinder is too few to judge a per-insert HU limit (docs/quality.md). Every other volume, its
  split and its files are the same as with M = 0;
* with ``reading_i0``, every pair simulated with photon starvation
  (:func:`bundle.data.simulate.simulate_pair`'s ``reading_i0``): the same anatomy, other noise;
* ``dicom/<patient>/``: the SOURCE as a CT DICOM series, for the first test patient (what the
  batch tool enhances) and the first training patient; the datalist points at these folders
  for those two patients' sources, so training, validation and inference all go through the
  DICOM reader as well as the NIfTI one. Both forms hold the same int16 HU and geometry.
* ``datalist.json``: ``{"training", "validation", "test"}``, entries ``{"patient", "source",
  "target"}`` (plus the optional ``clean``, ``labels``, ``objects`` and, in "test",
  ``target_repeat``) with paths relative to OUT; one more list per sweep dose, ``"test_dose<d>"``,
  the test entries with that dose's source; the split is by patient, reproducible from the seed:
  about 1/8 of the patients each for test and validation (at least one each from 3 patients),
  e.g. 6 / 1 / 1 for 8;
* ``demo.json``: the settings and the files written, last and atomically. A later call with
  the same settings finds it with every file present and returns without work, unless ``force``.

Geometry: slices of ``DEMO_FOV_MM / size`` mm pixels (2.7 mm for 128) and ``DEMO_SLICE_MM``
thickness; direction identity in LPS (columns to the patient's left, rows to posterior, slices to
superior), origin at the volume's centre.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bundle.data.phantom import flat_region, make_phantom, make_qa_phantom
from bundle.data.simulate import calibrated_i0, noise_free_scan, scan_geometry, simulate_pair
from bundle.metrics import find_flat_region, measure_noise_sigma
from bundle.data.volume_io import save_nifti
from bundle.utils.io import atomic_write_json

__all__ = [
    "DEMO_FOV_MM",
    "DEMO_SLICE_MM",
    "MANIFEST_NAME",
    "demo_geometry",
    "demo_patients",
    "demo_phantom",
    "demo_settings",
    "load_complete_manifest",
    "make_demo_dataset",
    "split_demo_patients",
]

logger = logging.getLogger(__name__)

DEMO_FOV_MM = 345.6
DEMO_SLICE_MM = 2.5
MANIFEST_NAME = "demo.json"
_FORMAT = 2  # bump when the files written for the same settings change
SWEEP_DOSES = (0.5, 0.1, 0.05)


def demo_geometry(slices: int, size: int) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """``(spacing, origin, direction)`` of a demo volume (see the module docstring)."""
    pixel_mm = DEMO_FOV_MM / size
    spacing = (DEMO_SLICE_MM, pixel_mm, pixel_mm)
    origin = (-(size - 1) / 2 * pixel_mm, -(size - 1) / 2 * pixel_mm, -(slices - 1) / 2 * DEMO_SLICE_MM)
    return spacing, origin, np.eye(3)


def _affine_ras(spacing, origin, direction) -> np.ndarray:
    slice_mm, row_mm, col_mm = spacing
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag([col_mm, row_mm, slice_mm])
    affine[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def split_demo_patients(patients: list[str], seed: int) -> dict[str, list[str]]:
    """Patients per split: test and validation about 1/8 each (one each from 3 patients up)."""
    n = len(patients)
    n_test = max(1, round(n / 8)) if n >= 2 else 0
    n_val = max(1, round(n / 8)) if n >= 3 else 0
    order = [patients[i] for i in np.random.default_rng(seed).permutation(n)]
    return {
        "training": sorted(order[n_test + n_val :]),
        "validation": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def demo_settings(
    num_volumes: int = 8, slices: int = 32, size: int = 128, seed: int = 0, dose: float = 0.25, dtype: str = "int16",
    qa_phantom: bool = True, sweep_doses=SWEEP_DOSES, qa_volumes: int = 0, reading_i0: float | None = None,
    qa_validation: int = 0,
) -> dict:
    """Everything the dataset's content depends on; equal settings mean equal files."""
    if num_volumes < 1 or slices < 1 or size < 16:
        raise ValueError(f"need at least 1 volume, 1 slice and 16 x 16 pixels, got {num_volumes}, {slices}, {size}")
    if not 0 < dose <= 1:
        raise ValueError(f"dose must be in (0, 1], got {dose}")
    if qa_volumes < 0:
        raise ValueError(f"qa_volumes must be >= 0, got {qa_volumes}")
    if qa_validation < 0:
        raise ValueError(f"qa_validation must be >= 0, got {qa_validation}")
    spacing, _, _ = demo_geometry(slices, size)
    if reading_i0 is not None and not reading_i0 > 0:
        raise ValueError(f"reading_i0 must be positive, got {reading_i0}")
    # absent at their defaults: datasets made before these settings existed stay complete
    extra = {"qa_volumes": int(qa_volumes)} if qa_volumes else {}
    if reading_i0 is not None:
        extra["reading_i0"] = float(reading_i0)
    if qa_validation:
        extra["qa_validation"] = int(qa_validation)
    return {
        "format": _FORMAT,
        "num_volumes": int(num_volumes),
        "slices": int(slices),
        "size": int(size),
        "seed": int(seed),
        "dose": float(dose),
        "dtype": dtype,
        "qa_phantom": bool(qa_phantom),
        "sweep_doses": [float(d) for d in sweep_doses],
        "spacing_mm": list(spacing),
        "i0_full": calibrated_i0(scan_geometry((size, size), spacing[1])),
        **extra,
    }


def demo_patients(settings: dict) -> tuple[list[str], dict[str, list[str]]]:
    """The patients of a demo dataset made with ``settings``, in the order their seeds are drawn
    (the index in this list seeds each one's phantom and noise), and their splits."""
    patients = [f"demo{i:03d}" for i in range(settings["num_volumes"])]
    splits = split_demo_patients(patients, settings["seed"])
    if settings["qa_phantom"]:
        patients.append("qa000")
        splits["test"].append("qa000")
    qa_volumes = settings.get("qa_volumes", 0)
    # after qa000, then the validation-only ones: every earlier volume keeps its index and noise seeds
    for k in range(1, qa_volumes + settings.get("qa_validation", 0) + 1):
        patients.append(f"qa{k:03d}")
        validation = k > qa_volumes or (k == 1 and qa_volumes >= 2)
        splits["validation" if validation else "training"].append(f"qa{k:03d}")
    return patients, splits


def _draw_phantom(settings: dict, index: int, patient: str):
    """Patient ``index`` of the dataset: its phantom and the seed of its (source, target) noise."""
    shape = (settings["slices"], settings["size"], settings["size"])
    spacing = tuple(settings["spacing_mm"])
    phantom_seed, noise_seed = np.random.SeedSequence([settings["seed"], index]).generate_state(2)
    if patient == "qa000":  # the fixed QA cylinder of every test split
        phantom = make_qa_phantom(shape=shape, spacing=spacing)
    elif patient.startswith("qa"):
        phantom = make_qa_phantom(shape=shape, spacing=spacing, seed=int(phantom_seed))
    else:
        phantom = make_phantom(int(phantom_seed), shape=shape, spacing=spacing)
    return phantom, int(noise_seed)


def demo_phantom(settings: dict, patient: str):
    """The phantom (:class:`bundle.data.phantom.Phantom`) behind one patient of a demo dataset made
    with ``settings`` (its manifest's), the same one its files were simulated from: more noise
    realisations of a volume can be drawn from it (``scripts/realisation_spread.py``)."""
    patients, _ = demo_patients(settings)
    if patient not in patients:
        raise ValueError(f"no patient {patient!r} in a demo dataset with these settings; it has {patients}")
    return _draw_phantom(settings, patients.index(patient), patient)[0]


def load_complete_manifest(out: str | Path, settings: dict) -> dict | None:
    """The manifest in ``out`` if it was written with ``settings`` and all its files exist."""
    path = Path(out) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("settings") != settings:
        return None
    files = manifest.get("files")
    if not isinstance(files, list) or not all((Path(out) / f).is_file() for f in files):
        return None
    return manifest


def _previous_files(out: Path) -> list[str]:
    try:
        files = json.loads((out / MANIFEST_NAME).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def make_demo_dataset(
    out: str | Path,
    *,
    num_volumes: int = 8,
    slices: int = 32,
    size: int = 128,
    seed: int = 0,
    dose: float = 0.25,
    dtype: str = "int16",
    force: bool = False,
    workers: int = 2,
    qa_phantom: bool = True,
    sweep_doses=SWEEP_DOSES,
    qa_volumes: int = 0,
    reading_i0: float | None = None,
    qa_validation: int = 0,
    log: Callable[[str], None] = logger.info,
) -> dict:
    """Write (or find complete) the demo dataset in ``out``; returns its manifest.

    The manifest has ``settings``, ``patients`` (per patient: split, files, noise sigma of both
    members in the liver, seconds), ``files`` (every file, relative to ``out``), ``dicom``
    (patient -> series folder), ``seconds`` and ``skipped`` (True when nothing was done).
    """
    out = Path(out)
    settings = demo_settings(num_volumes, slices, size, seed, dose, dtype, qa_phantom, sweep_doses, qa_volumes,
                             reading_i0, qa_validation)
    if not force:
        manifest = load_complete_manifest(out, settings)
        if manifest is not None:
            log(f"{out}: complete demo dataset with these settings found, nothing to do (force to rebuild)")
            return {**manifest, "skipped": True}

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    stale = _previous_files(out)
    # Until the new manifest is written last, the folder must not pass as complete.
    (out / MANIFEST_NAME).unlink(missing_ok=True)

    spacing, origin, direction = demo_geometry(slices, size)
    affine = _affine_ras(spacing, origin, direction)
    patients, splits = demo_patients(settings)
    split_of = {p: split for split, members in splits.items() for p in members}
    dicom_patients = [members[0] for members in (splits["test"], splits["training"]) if members]
    uid_key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    files: list[str] = []
    records: dict[str, dict] = {}
    dicom_folders: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as executor:
        for index, patient in enumerate(patients):
            t0 = time.perf_counter()
            phantom, noise_seed = _draw_phantom(settings, index, patient)
            t1 = time.perf_counter()
            source, target = simulate_pair(phantom.hu, spacing, dose=dose, seed=int(noise_seed), executor=executor,
                                           reading_i0=reading_i0)
            t2 = time.perf_counter()
            names = {"source": f"{patient}_source.nii.gz", "target": f"{patient}_target.nii.gz",
                     "clean": f"{patient}_clean.nii.gz", "labels": f"{patient}_labels.nii.gz",
                     "objects": f"{patient}_objects.json"}
            save_nifti(source, out / names["source"], affine, dtype=dtype)
            save_nifti(target, out / names["target"], affine, dtype=dtype)
            clean = noise_free_scan(phantom.hu, spacing, executor=executor)
            save_nifti(clean, out / names["clean"], affine, dtype="float32")
            save_nifti(phantom.labels, out / names["labels"], affine, dtype="uint8")
            atomic_write_json(out / names["objects"], {  # voxel centres are (slice, row, col) of the files
                "affine_ras": affine.tolist(), "spacing_mm": list(spacing),
                "lesions": phantom.lesions, "inserts": phantom.inserts,
            })
            extra: dict[str, str] = {}
            if split_of[patient] == "test":
                # a second full-dose realisation and the dose sweep, each its own noise draw
                seeds = np.random.SeedSequence([seed, index, 1]).generate_state(1 + len(sweep_doses))
                _, repeat = simulate_pair(phantom.hu, spacing, dose=1.0, seed=int(seeds[0]), executor=executor,
                                          reading_i0=reading_i0)
                extra["target_repeat"] = f"{patient}_target2.nii.gz"
                save_nifti(repeat, out / extra["target_repeat"], affine, dtype=dtype)
                for sweep_dose, sweep_seed in zip(sweep_doses, seeds[1:]):
                    low, _ = simulate_pair(phantom.hu, spacing, dose=sweep_dose, seed=int(sweep_seed),
                                           executor=executor, reading_i0=reading_i0)
                    extra[f"source_dose{sweep_dose:g}"] = f"{patient}_source_dose{sweep_dose:g}.nii.gz"
                    save_nifti(low, out / extra[f"source_dose{sweep_dose:g}"], affine, dtype=dtype)
            files += list(names.values()) + list(extra.values())
            if patient in dicom_patients:
                from bundle.dicom import write_ct_series  # imports MONAI: only when needed

                folder = out / "dicom" / patient
                for old in folder.glob("*.dcm") if folder.is_dir() else []:
                    old.unlink()  # the folder is ours; a different run's slices must not linger
                paths = write_ct_series(
                    source,
                    folder,
                    spacing=spacing,
                    origin=origin,
                    direction=direction,
                    series_description=f"Demo phantom, simulated {dose:g} dose",
                    patient={"PatientID": patient, "PatientName": f"Demo^{patient}"},
                    uid_seed=f"ctv2v-demo:{uid_key}:{patient}",
                    slice_thickness=spacing[0],  # a phantom sampled on its grid: contiguous slices
                )
                files += [p.relative_to(out).as_posix() for p in paths]
                dicom_folders[patient] = folder.relative_to(out).as_posix()
            mask = flat_region(phantom)
            if mask.sum() < 50:  # no liver in this volume
                mask = find_flat_region(phantom.hu)
            records[patient] = {
                "split": split_of[patient],
                "source": dicom_folders.get(patient, names["source"]),
                "target": names["target"],
                **{k: names[k] for k in ("clean", "labels", "objects")},
                **extra,
                "noise_sigma_source_hu": round(measure_noise_sigma(source, mask), 2),
                "noise_sigma_target_hu": round(measure_noise_sigma(target, mask), 2),
                "lesions": len(phantom.lesions),
                "seconds_phantom": round(t1 - t0, 3),
                "seconds_per_slice": round((t2 - t1) / slices, 4),
            }
            r = records[patient]
            log(
                f"{patient} ({r['split']}): noise sigma source {r['noise_sigma_source_hu']:.1f} HU, "
                f"target {r['noise_sigma_target_hu']:.1f} HU (liver), {r['seconds_per_slice']:.3f} s/slice"
                + (f", DICOM source in {dicom_folders[patient]}" if patient in dicom_folders else "")
            )

    keys = ("source", "target", "clean", "labels", "objects", "target_repeat")
    datalist = {
        split: [{"patient": p, **{k: records[p][k] for k in keys if k in records[p]}} for p in members]
        for split, members in splits.items()
    }
    for sweep_dose in sweep_doses:  # the test entries with the sources of another dose
        key = f"source_dose{sweep_dose:g}"
        datalist[f"test_dose{sweep_dose:g}"] = [
            {**entry, "source": records[entry["patient"]][key]} for entry in datalist["test"]
        ]
    atomic_write_json(out / "datalist.json", datalist)
    files.append("datalist.json")

    keep = set(files)
    for name in stale:
        old = out / name
        if name not in keep and old.is_file() and old.resolve().is_relative_to(out.resolve()):
            old.unlink()

    manifest = {
        "settings": settings,
        "patients": records,
        "dicom": dicom_folders,
        "files": files,
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(out / MANIFEST_NAME, manifest)
    return {**manifest, "skipped": False}
