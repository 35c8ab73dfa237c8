"""``ctv2v simulate IN OUT``: simulated low-dose / full-dose pairs from normal-dose CT volumes.

IN is a NIfTI file, a DICOM series folder, or a folder tree holding any number of both (NIfTI
files are found by name, DICOM series by reading headers and grouping by SeriesInstanceUID;
series that are not plain axial original CT, such as localizers, are skipped with a note).
For every volume ``<name>`` it writes

* ``OUT/<name>_source.nii.gz``: simulated low dose (flux ``dose * I0``);
* ``OUT/<name>_target.nii.gz``: the same scan at full flux ``I0`` (it has noise too, less);

both on the input's voxel grid and affine (see :mod:`bundle.data.simulate` for the physics), and
``OUT/datalist.json`` listing the pairs written by this run, all under ``"test"`` by default
(``--split`` picks another list; for a split by patient, run ``ctv2v datalist`` on OUT).

``<name>`` is the input's path below IN without extension, ``/`` replaced by ``_``
(``IN/L067/full.nii.gz`` -> ``L067_full``); a DICOM series is named after its folder (IN's own
name when IN is the series folder), with ``_s<SeriesNumber>`` added when one folder holds
several series. Inputs are only read. One input that fails is reported with its path and the
others are still processed; the exit status is then 1.

Each volume's noise is seeded from ``--seed`` and its name, so volumes never share a noise
realisation and a re-run reproduces every file.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

SPLIT_CHOICES = ("test", "training", "validation")


@dataclass
class SimulationInput:
    """One volume to simulate: a NIfTI file (``path``) or a DICOM series (``files``)."""

    name: str
    path: Path
    files: list[Path] = field(default_factory=list)

    @property
    def is_dicom(self) -> bool:
        return bool(self.files)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate low-dose/full-dose pairs from normal-dose CT (NIfTI or DICOM)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("input", type=Path, metavar="IN", help="NIfTI file, DICOM series folder, or a folder tree of them")
    parser.add_argument("output", type=Path, metavar="OUT", help="output folder")
    parser.add_argument("--dose", type=float, default=0.25, help="dose fraction of the source (default 0.25)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument(
        "--i0", type=float, default=None,
        help="full-dose photons per detector bin per view (default: calibrated to about 12 HU "
        "full-dose noise in soft tissue, scaled to each volume's matrix and pixel size)",
    )
    parser.add_argument(
        "--reading-i0", type=float, default=None, metavar="PHOTONS",
        help="full-dose photons per reading of the modelled scanner: each simulated bin becomes "
        "I0 / PHOTONS readings, logged one by one, which brings photon-starvation streaks at low dose "
        "(e.g. 3e4; default: one reading per bin, no starvation)",
    )
    parser.add_argument("--workers", type=int, default=2, help="threads, one slice each (default 2)")
    parser.add_argument(
        "--dtype", choices=("float32", "int16"), default="float32",
        help="NIfTI data type of the outputs (default float32; int16 rounds HU)",
    )
    parser.add_argument(
        "--split", choices=SPLIT_CHOICES, default="test",
        help="datalist list that receives all pairs (default test)",
    )
    parser.set_defaults(func=run)


def _flat_name(relative: Path, fallback: str) -> str:
    parts = [p for p in relative.parts if p not in ("", ".")]
    name = "_".join(parts) if parts else fallback
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) or "volume"


def _strip_nifti(name: str) -> str:
    lower = name.lower()
    for suffix in (".nii.gz", ".nii"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_inputs(root: Path, exclude: Path | None = None) -> tuple[list[SimulationInput], list[str]]:
    """The volumes under ``root`` and the problems found on the way (messages naming the file).

    ``exclude``: a folder to ignore (the output folder, when it lies inside ``root``).
    """
    from bundle.data.inputs import find_ct_inputs, series_folder
    from bundle.data.volume_io import is_nifti
    from bundle.dicom import select_reason

    root = Path(root)
    if not root.exists():
        return [], [f"{root}: no such file or folder"]
    if root.is_file() and not is_nifti(root):
        return [], [f"{root}: not a NIfTI file (.nii, .nii.gz); for DICOM pass the series folder"]
    if root.is_file():
        return [SimulationInput(_strip_nifti(root.name), root)], []

    # hidden names are not scans here: AppleDouble "._x.nii.gz", this tool's ".partial" folders
    found = find_ct_inputs(root, exclude=exclude, skip_hidden=True)
    inputs = [
        SimulationInput(_flat_name((path.parent / _strip_nifti(path.name)).relative_to(root), root.name), path)
        for path in found.nifti
    ]
    problems: list[str] = []
    for problem in found.problems:
        if problem.kind == "unreadable":
            problems.append(f"{problem.path}: unreadable DICOM file: {problem.reason}")
        elif problem.kind == "duplicate":
            logger.warning("%s: skipped, %s", problem.path, problem.reason)
        # not-dicom / not-an-image files (notes, DICOMDIR) are simply not inputs
    selectable = []
    for info in found.series:
        reason = select_reason(info)
        if reason is not None:
            print(f"skip DICOM series in {info.files[0].parent}: {reason} ({info.summary()})")
            continue
        selectable.append((series_folder(info), info))
    per_folder: dict[Path, int] = {}
    for folder, _ in selectable:
        per_folder[folder] = per_folder.get(folder, 0) + 1
    for index, (folder, info) in enumerate(selectable):
        name = _flat_name(folder.relative_to(root), root.resolve().name)
        if per_folder[folder] > 1:
            name += f"_s{info.series_number if info.series_number is not None else index}"
        inputs.append(SimulationInput(name, folder, info.files))

    # Two inputs flattening to one name must not overwrite each other.
    seen: dict[str, int] = {}
    for item in inputs:
        count = seen.get(item.name, 0)
        seen[item.name] = count + 1
        if count:
            item.name = f"{item.name}_{count + 1}"
    return inputs, problems


def volume_seed(seed: int, name: str) -> int:
    """Noise seed of one volume: a function of the run's seed and the volume's name only."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def axial_axis(volume) -> int:
    """The ``hu`` axis closest to the patient's z axis (0 for an ordinary axial series)."""
    direction = np.asarray(volume.direction, dtype=np.float64)
    ijk_axis = int(np.argmax(np.abs(direction[2, :])))  # column of the i, j or k vector
    return 2 - ijk_axis  # hu is [k, j, i]


def simulate_volume(volume, *, dose, i0, seed, executor, reading_i0=None):
    """``(source_hu, target_hu, seconds)`` for a CTVolume, slices taken in its axial plane."""
    from bundle.data.simulate import simulate_pair

    axis = axial_axis(volume)
    hu = np.moveaxis(volume.hu, axis, 0)
    in_plane = [volume.spacing[a] for a in range(3) if a != axis]
    start = time.perf_counter()
    source, target = simulate_pair(hu, in_plane, dose=dose, i0=i0, seed=seed, executor=executor, reading_i0=reading_i0)
    seconds = time.perf_counter() - start
    return np.moveaxis(source, 0, axis), np.moveaxis(target, 0, axis), seconds


def _noise_report(volume, source, target) -> str:
    from bundle.metrics import find_flat_region, measure_noise_sigma

    flat = find_flat_region(volume.hu)
    sigma_source = measure_noise_sigma(source, flat)
    sigma_target = measure_noise_sigma(target, flat)
    if not np.isfinite(sigma_source):
        return "noise sigma n/a (no flat soft-tissue region found)"
    return (
        f"noise sigma source {sigma_source:.1f} HU, target {sigma_target:.1f} HU "
        f"(flat soft tissue, {int(flat.sum())} voxels)"
    )


def run(args) -> int:
    from bundle.data.volume_io import load_nifti, save_ct_nifti
    from bundle.utils.io import atomic_write_json

    if not args.dose > 0:
        print(f"error: --dose must be positive, got {args.dose}", file=sys.stderr)
        return 2
    if args.i0 is not None and not args.i0 > 0:
        print(f"error: --i0 must be positive, got {args.i0}", file=sys.stderr)
        return 2
    if args.reading_i0 is not None and not args.reading_i0 > 0:
        print(f"error: --reading-i0 must be positive, got {args.reading_i0}", file=sys.stderr)
        return 2
    out: Path = args.output
    if out.exists() and not out.is_dir():
        print(f"error: {out} exists and is not a folder", file=sys.stderr)
        return 2

    inputs, problems = find_inputs(args.input, exclude=out)
    for problem in problems:
        print(f"FAILED {problem}", file=sys.stderr)
    if not inputs:
        print(f"error: no NIfTI files or DICOM series found in {args.input}", file=sys.stderr)
        return 1
    input_paths = {p.resolve() for item in inputs for p in (item.files or [item.path])}

    failures = len(problems)
    entries = []
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as executor:
        for item in inputs:
            source_path = out / f"{item.name}_source.nii.gz"
            target_path = out / f"{item.name}_target.nii.gz"
            try:
                if {source_path.resolve(), target_path.resolve()} & input_paths:
                    raise ValueError("an output would overwrite an input; choose another OUT")
                if item.is_dicom:
                    from bundle.dicom import read_series

                    volume = read_series(item.files)
                else:
                    volume = load_nifti(item.path)
                source, target, seconds = simulate_volume(
                    volume,
                    dose=args.dose,
                    i0=args.i0,
                    reading_i0=args.reading_i0,
                    seed=volume_seed(args.seed, item.name),
                    executor=executor,
                )
                save_ct_nifti(volume, source_path, hu=source, dtype=args.dtype)
                save_ct_nifti(volume, target_path, hu=target, dtype=args.dtype)
            except Exception as exc:  # noqa: BLE001 - one bad input must not stop the others
                failures += 1
                logger.debug("simulation of %s failed", item.path, exc_info=True)
                message = str(exc) if str(item.path) in str(exc) else f"{item.path}: {type(exc).__name__}: {exc}"
                print(f"FAILED {message}", file=sys.stderr)
                continue
            slices = volume.hu.shape[axial_axis(volume)]
            print(
                f"{item.name}: {slices} slices, {_noise_report(volume, source, target)}, "
                f"{seconds / slices:.3f} s/slice"
            )
            entries.append(
                {"patient": item.name, "source": source_path.name, "target": target_path.name}
            )

    if entries:
        datalist = {split: [] for split in SPLIT_CHOICES}
        datalist[args.split] = entries
        datalist = {key: datalist[key] for key in ("training", "validation", "test")}
        atomic_write_json(out / "datalist.json", datalist)
    print(
        f"{len(entries)} pair(s) written to {out}, {failures} failure(s)"
        + (f"; datalist {out / 'datalist.json'} (all under {args.split!r})" if entries else "")
    )
    return 1 if failures else 0
