"""The radiologists' batch tool behind ``ctv2v enhance INPUT OUTPUT``.

INPUT is a folder tree of DICOM files (any names, nested, mixed with other files) and/or NIfTI
files, or a single file. :func:`run_batch`:

1. finds every DICOM series (headers only, :func:`bundle.dicom.discover_series`) and every NIfTI
   file; selects axial ORIGINAL CT series (:func:`bundle.dicom.select_reason`) and skips the
   rest with the reason;
2. for each selected series: reads it with the validating reader (sorted along the slice normal;
   a missing slice, tilt or a corrupt file fails the series), enhances it with the ONE loaded
   :class:`~bundle.inference.CTEnhancer`, and writes it to its own folder of OUTPUT;
3. keeps ``OUTPUT/summary.csv`` up to date (rewritten atomically after every series).

Output layout (every name sanitised from untrusted DICOM text, ending in a hash of the UID, so it
cannot escape OUTPUT and two series never share a folder)::

    OUTPUT/summary.csv
    OUTPUT/<study description>_<study uid hash>/<series number>_<series description>_<series uid hash>/
        IM_0001.dcm ...          derived CT series (--format dicom|both), one file per source slice
        enhanced.nii.gz          int16 HU with the source geometry (--format nifti|both)
        uncertainty.nii.gz       float32 HU, std over samples (--num-samples > 1)
        ctv2v-done.json          completion marker: settings, model, timing (written last)
    OUTPUT/nifti/<file stem>_<path hash>/enhanced.nii.gz ...   for NIfTI inputs (NIfTI only)

A series is written into ``<folder>.partial`` and renamed into place after its marker is written,
so a crash leaves no half series under a final name; a re-run removes stale ``.partial`` folders
and skips series whose folder holds a marker. Nothing is written inside INPUT, ever.

Privacy: logs and the summary carry no patient name, ID or birth date. The summary identifies
series by a hash of their UIDs (UIDs are not names, but they link a row back to a patient in a
PACS; the hash still matches the folder name), series number and description. Messages of the
reader are stripped of folder paths (export folders are often named after the patient).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bundle.utils.io import atomic_write_json, atomic_write_text

__all__ = [
    "DONE_MARKER",
    "SUMMARY_COLUMNS",
    "SUMMARY_NAME",
    "BatchError",
    "BatchResult",
    "SeriesRow",
    "check_output_location",
    "find_inputs",
    "from_spl",
    "run_batch",
    "safe_name",
    "to_spl",
    "uid_hash",
]

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.csv"
DONE_MARKER = "ctv2v-done.json"
PARTIAL_SUFFIX = ".partial"
ENHANCED_NIFTI = "enhanced.nii.gz"
UNCERTAINTY_NIFTI = "uncertainty.nii.gz"
FORMATS = ("dicom", "nifti", "both")
SUMMARY_COLUMNS = (
    "index",
    "kind",
    "study_uid_hash",
    "series_uid_hash",
    "series_number",
    "modality",
    "description",
    "slices",
    "status",
    "reason",
    "seconds",
    "output",
)


class BatchError(ValueError):
    """The batch cannot start (bad INPUT/OUTPUT, settings); nothing was written."""


@dataclass
class SeriesRow:
    """One line of ``summary.csv``: a series (or a NIfTI file, or an unreadable file) and its fate.

    ``status`` is ``pending`` until processed, then ``enhanced``, ``skipped`` or ``failed``;
    ``output`` is relative to OUTPUT.
    """

    index: int
    kind: str  # "dicom" | "nifti" | "file"
    study_uid_hash: str = ""
    series_uid_hash: str = ""
    series_number: str = ""
    modality: str = ""
    description: str = ""
    slices: int | str = ""
    status: str = "pending"
    reason: str = ""
    seconds: str = ""
    output: str = ""

    def label(self) -> str:
        """For logs: no patient data, only series-level text and hashes."""
        if self.kind == "nifti":
            return f"NIfTI '{self.description}'"
        if self.kind == "file":
            return f"file '{self.description}'"
        return (
            f"series #{self.series_number or '?'} '{self.description}' ({self.modality or '?'}, "
            f"{self.slices} files, uid {self.series_uid_hash})"
        )


@dataclass
class BatchResult:
    rows: list[SeriesRow]
    summary_path: Path

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.rows)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 otherwise."""
        return 1 if self.failed else 0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.status] = out.get(row.status, 0) + 1
        return out


@dataclass
class _Job:
    """Work behind a pending row."""

    row: SeriesRow
    files: list[Path] = field(default_factory=list)  # DICOM slices, or the one NIfTI file
    series_uid: str = ""
    study_uid: str = ""
    blocked: str | None = None  # a reason to fail without reading (an unreadable file of it)


# --- names and places ---------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, fallback: str, max_length: int = 40) -> str:
    """A folder name from untrusted text: ASCII letters, digits, ``._-``; no leading dots; short.

    Never empty, ``.`` or ``..``, never contains a separator, so it cannot leave its parent.
    """
    name = _UNSAFE.sub("_", str(text or "")).strip("._-")[:max_length].strip("._-")
    return name or fallback


def uid_hash(uid: str, length: int = 10) -> str:
    """First ``length`` hex digits of the SHA-256 of a UID (or path): stable, not reversible."""
    return hashlib.sha256(str(uid).encode()).hexdigest()[:length]


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _is_within(path: Path, root: Path) -> bool:
    path, root = _real(path), _real(root)
    return path == root or root in path.parents


def check_output_location(input_path: str | os.PathLike, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``(input, output)`` resolved; raises :class:`BatchError` if OUTPUT is INPUT or inside it."""
    input_path, output_dir = Path(input_path), Path(output_dir)
    if not input_path.exists():
        raise BatchError(f"INPUT {input_path} does not exist")
    if output_dir.exists() and not output_dir.is_dir():
        raise BatchError(f"OUTPUT {output_dir} exists and is not a folder")
    if input_path.is_dir() and _is_within(output_dir, input_path):
        raise BatchError(
            f"OUTPUT {output_dir} is inside INPUT {input_path}: nothing may be written into the input tree; "
            "choose an output folder outside it"
        )
    if input_path.is_file() and _real(output_dir) == _real(input_path):
        raise BatchError(f"OUTPUT {output_dir} is the input file")
    return input_path, output_dir


# --- orientation: the networks' (S, P, L) layout --------------------------------------------------
def _spl_permutation(direction: np.ndarray) -> tuple[list[int], list[bool]]:
    """For ``hu[k, j, i]`` with ``direction`` (LPS vectors along i, j, k as columns): the axis
    permutation and flips that give axes (superior, posterior, left), as ``Orientationd("SPL")``
    gives the training data: each array axis goes to the patient axis it is closest to."""
    direction = np.asarray(direction, float)
    vectors = [direction[:, 2], direction[:, 1], direction[:, 0]]  # along k, j, i
    target_axis = {2: 0, 1: 1, 0: 2}  # LPS component z -> axis 0 (S), y -> 1 (P), x -> 2 (L)
    perm: list[int | None] = [None, None, None]
    flips = [False, False, False]
    for axis, vector in enumerate(vectors):
        component = int(np.argmax(np.abs(vector)))
        out_axis = target_axis[component]
        if perm[out_axis] is not None:
            raise ValueError(f"ambiguous orientation (two axes closest to one patient axis):\n{direction}")
        perm[out_axis] = axis
        flips[out_axis] = bool(vector[component] < 0)
    return perm, flips  # type: ignore[return-value]


def to_spl(hu: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``hu[k, j, i]`` reoriented to (S, P, L): the layout the networks were trained on."""
    perm, flips = _spl_permutation(direction)
    out = np.transpose(hu, perm)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return np.ascontiguousarray(out)


def from_spl(spl: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_spl`: back to ``[k, j, i]`` of the volume with ``direction``."""
    perm, flips = _spl_permutation(direction)
    out = spl
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return np.ascontiguousarray(np.transpose(out, np.argsort(perm)))


# --- finding the work -----------------------------------------------------------------------------
def _nifti_files(root: Path) -> list[Path]:
    from bundle.data.volume_io import is_nifti

    if root.is_file():
        return [root] if is_nifti(root) else []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found += [Path(dirpath) / name for name in sorted(filenames) if is_nifti(name)]
    return found


def _series_uid_of_unreadable(path: Path) -> str | None:
    """The SeriesInstanceUID of a file discovery could not read, if its header still says it."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SeriesInstanceUID"])
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    except Exception:  # noqa: BLE001 - it is unreadable; we only try to attribute it
        return None
    return uid if re.fullmatch(r"[0-9.]{1,64}", uid) else None


def find_inputs(input_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Datalist-style items ``{"source": path}`` for the ``configs/inference.yaml`` ``input_dir``.

    Every NIfTI file, and every folder that holds exactly one selectable CT series (and no other
    series). A series sharing its folder with another series is left out with a warning (the
    ``ctv2v enhance`` batch tool handles any layout).
    """
    from bundle.dicom import discover_series, select_reason

    root = Path(input_dir)
    if not root.exists():
        raise FileNotFoundError(f"input_dir {root} does not exist")
    items = [{"source": str(p)} for p in _nifti_files(root)]
    series, _ = discover_series(root)
    by_folder: dict[Path, list] = {}
    for info in series:
        for folder in {f.parent for f in info.files}:
            by_folder.setdefault(folder, []).append(info)
    for info in series:
        if select_reason(info) is not None:
            continue
        folders = {f.parent for f in info.files}
        if len(folders) == 1 and len(by_folder[next(iter(folders))]) == 1:
            items.append({"source": str(next(iter(folders)))})
        else:
            logger.warning("series %s shares or spans folders; use `ctv2v enhance` for it", uid_hash(info.series_uid))
    return items


def _redactor(input_root: Path, files: Iterable[Path]) -> Callable[[str], str]:
    """Strip folder paths from messages (export folders are often named after the patient)."""
    files = list(files)
    folders = {p.parent for p in files}
    for folder in list(folders):
        folders.update(folder.parents)
    pairs = [(str(p), p.name) for p in files] + [(str(f), "<folder>") for f in folders if str(f) not in ("/", ".")]
    pairs.append((str(input_root), "<input>"))
    pairs.sort(key=lambda pair: len(pair[0]), reverse=True)

    def redact(message: str) -> str:
        for old, new in pairs:
            message = message.replace(old, new)
        return message

    return redact


def _plan(input_path: Path, output_dir: Path) -> tuple[list[_Job], Callable[[str], str]]:
    """Rows for everything found, and the jobs for the pending ones."""
    from bundle.dicom import discover_series, select_reason

    nifti = _nifti_files(input_path)
    nifti_set = set(nifti)
    series, problems = discover_series(input_path)
    problems = [p for p in problems if p.path not in nifti_set]
    unreadable = [p for p in problems if p.kind == "unreadable"]
    all_files = [f for info in series for f in info.files] + [p.path for p in problems] + nifti
    redact = _redactor(input_path, all_files)

    by_uid: dict[str, list] = {}
    loose = []
    for problem in unreadable:
        uid = _series_uid_of_unreadable(problem.path)
        if uid:
            by_uid.setdefault(uid, []).append(problem)
        else:
            loose.append(problem)
    known_uids = {info.series_uid for info in series}

    jobs: list[_Job] = []
    for info in series:
        row = SeriesRow(
            index=len(jobs) + 1,
            kind="dicom",
            study_uid_hash=uid_hash(info.study_uid),
            series_uid_hash=uid_hash(info.series_uid),
            series_number="" if info.series_number is None else str(info.series_number),
            modality=info.modality,
            description=info.series_description,
            slices=len(info.files),
        )
        job = _Job(row, list(info.files), info.series_uid, info.study_uid)
        reason = select_reason(info)
        if reason is not None:
            row.status, row.reason = "skipped", reason
        else:
            folders = {f.parent for f in info.files}
            mine = by_uid.get(info.series_uid, [])
            nearby = [p for p in loose if p.path.parent in folders]
            if mine or nearby:
                first = (mine or nearby)[0]
                which = "of this series" if mine else "in the series' folder (may be one of its slices)"
                job.blocked = redact(
                    f"{len(mine) + len(nearby)} unreadable DICOM file(s) {which}, first {first.path}: {first.reason}"
                )
        jobs.append(job)
    for problem in loose:
        row = SeriesRow(index=len(jobs) + 1, kind="file", description=redact(str(problem.path)), status="skipped",
                        reason=redact(f"unreadable DICOM file: {problem.reason}"))
        jobs.append(_Job(row))
    for uid, orphans in by_uid.items():
        if uid in known_uids:
            continue
        row = SeriesRow(index=len(jobs) + 1, kind="dicom", series_uid_hash=uid_hash(uid), status="failed",
                        slices=len(orphans),
                        reason=redact(f"every file of this series is unreadable, first {orphans[0].path}: "
                                      f"{orphans[0].reason}"))
        jobs.append(_Job(row))
    for path in nifti:
        relative = path.relative_to(input_path) if input_path.is_dir() else Path(path.name)
        # the file name only: folder names of exports often name the patient (the hash tells apart)
        row = SeriesRow(index=len(jobs) + 1, kind="nifti", series_uid_hash=uid_hash(str(relative)),
                        modality="", description=path.name)
        jobs.append(_Job(row, [path]))
    return jobs, redact


def _write_summary(path: Path, rows: list[SeriesRow]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        values = asdict(row)
        for key, value in values.items():
            text = " ".join(str(value).split())
            if text[:1] in ("=", "+", "-", "@") and key in ("description", "reason"):
                text = "'" + text  # a spreadsheet must not run DICOM text as a formula
            values[key] = text
        writer.writerow(values)
    atomic_write_text(path, buffer.getvalue())


# --- one series ---------------------------------------------------------------------------------
def _study_folder(header, study_uid: str) -> str:
    from bundle.dicom.derived import _dicom_text

    description = _dicom_text(header.get("StudyDescription", ""))
    return f"{safe_name(description, 'study')}_{uid_hash(study_uid)}"


def _series_folder(row: SeriesRow, description: str) -> str:
    number = safe_name(row.series_number, "x", 12)
    return f"{number}_{safe_name(description, 'series')}_{row.series_uid_hash}"


def _output_folder(job: _Job, output_dir: Path) -> Path:
    if job.row.kind == "nifti":
        stem = job.files[0].name
        for suffix in (".nii.gz", ".nii"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        relative = Path("nifti") / f"{safe_name(stem, 'volume')}_{job.row.series_uid_hash}"
    else:
        import pydicom

        header = pydicom.dcmread(job.files[0], stop_before_pixels=True,
                                 specific_tags=["StudyDescription", "SeriesDescription"])
        relative = Path(_study_folder(header, job.study_uid)) / _series_folder(job.row, job.row.description)
    folder = output_dir / relative
    if not _is_within(folder, output_dir):  # cannot happen with safe names; belt and braces
        raise RuntimeError(f"output folder {relative} escapes OUTPUT")
    return folder


def _done_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("status") == "enhanced" else None


def _enhance_volume(enhancer, volume, settings: dict, progress: bool):
    """HU of ``volume`` enhanced, in its own ``[k, j, i]`` order: ``(hu, uncertainty or None)``."""
    import torch

    spl = to_spl(volume.hu, volume.direction)
    result = enhancer.enhance(
        torch.from_numpy(spl)[None],
        num_inference_steps=settings["steps"],
        eta=settings["eta"],
        strength=settings["strength"],
        num_samples=settings["num_samples"],
        seed=settings["seed"],
        progress=progress,
    )
    hu = from_spl(result.hu[0].float().cpu().numpy(), volume.direction)
    spread = None
    if result.uncertainty is not None:
        spread = from_spl(result.uncertainty[0].float().cpu().numpy(), volume.direction)
    return hu, spread


def _process(job: _Job, folder: Path, enhancer, settings: dict, formats: set[str],
             model_version: str, software_version: str, progress: bool) -> None:
    """Read, enhance and write one series into ``folder`` (via ``folder.partial``)."""
    from bundle.data.volume_io import load_nifti, save_ct_nifti
    from bundle.dicom import read_series
    from bundle.dicom.derived import derived_hu, padding_hu, write_derived_series

    if job.row.kind == "nifti":
        volume = load_nifti(job.files[0])
    else:
        volume = read_series(job.files)
    job.row.slices = volume.hu.shape[0]
    staging = folder.with_name(folder.name + PARTIAL_SUFFIX)
    if staging.exists():
        shutil.rmtree(staging)  # an interrupted earlier attempt: ours, inside OUTPUT
    staging.mkdir(parents=True)
    try:
        hu, spread = _enhance_volume(enhancer, volume, settings, progress)
        written: list[str] = []
        if job.row.kind == "dicom" and "dicom" in formats:
            paths = write_derived_series(
                hu, volume, staging, settings=settings, model_version=model_version,
                software_version=software_version,
            )
            written += [p.name for p in paths]
        if job.row.kind == "nifti" or "nifti" in formats:
            padding = [padding_hu(volume.reference)] * volume.hu.shape[0] if job.row.kind == "dicom" else None
            save_ct_nifti(volume, staging / ENHANCED_NIFTI, hu=derived_hu(hu, volume, padding), dtype="int16")
            written.append(ENHANCED_NIFTI)
        if spread is not None:
            save_ct_nifti(volume, staging / UNCERTAINTY_NIFTI, hu=spread, dtype="float32")
            written.append(UNCERTAINTY_NIFTI)
        atomic_write_json(staging / DONE_MARKER, {  # last: the series is complete
            "status": "enhanced",
            "settings": settings,
            "model": model_version,
            "software": software_version,
            "series_uid_hash": job.row.series_uid_hash,
            "slices": int(volume.hu.shape[0]),
            "files": written,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        os.replace(staging, folder)  # atomic: the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class _Blocked(Exception):
    """A series failed for a reason already phrased for the summary (no paths in it)."""


def _run_job(job: _Job, input_path: Path, output_dir: Path, enhancer, settings: dict, formats: set[str],
             model_version: str, software_version: str, progress: bool) -> None:
    """Enhance one pending series, or skip it if a previous run finished it; sets its row."""
    row = job.row
    if job.blocked:
        raise _Blocked(job.blocked)
    folder = _output_folder(job, output_dir)
    row.output = str(folder.relative_to(output_dir))
    if input_path.is_dir() and (_is_within(folder, input_path) or _is_within(input_path, folder)):
        raise _Blocked(f"output folder {row.output} would overlap INPUT; choose another OUTPUT")
    marker = _done_marker(folder)
    if marker is not None:
        row.status = "skipped"
        row.reason = f"already enhanced ({marker.get('finished', 'earlier run')})"
        if marker.get("settings") != settings or marker.get("model") != model_version:
            row.reason += (f" with other settings or model ({marker.get('settings')}, {marker.get('model')}); "
                           "delete its folder to redo it")
        return
    if folder.exists():
        raise _Blocked(f"output folder {row.output} exists without a completion marker (not written by this "
                       "tool?); move it away to enhance this series")
    _process(job, folder, enhancer, settings, formats, model_version, software_version, progress)
    row.status, row.reason = "enhanced", ""


# --- the batch ------------------------------------------------------------------------------------
def run_batch(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    enhancer,
    *,
    steps: int = 50,
    eta: float = 0.0,
    strength: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
    output_format: str = "dicom",
    model_version: str = "unknown",
    software_version: str | None = None,
    progress: bool = True,
) -> BatchResult:
    """Enhance every selectable series under ``input_path`` into ``output_dir`` (module docstring).

    Args:
        input_path: a folder tree (DICOM and/or NIfTI) or one file.
        output_dir: the output folder (created); must not be inside ``input_path``.
        enhancer: a loaded :class:`~bundle.inference.CTEnhancer` on its device (used for all).
        steps, eta, strength, num_samples, seed: sampler settings (recorded in the outputs).
        output_format: ``"dicom"``, ``"nifti"`` or ``"both"`` for DICOM sources; NIfTI sources
            always give NIfTI.
        model_version, software_version: recorded in the derived series and the marker.
        progress: tqdm bars for the batch and the DDIM steps of each series.

    Returns:
        :class:`BatchResult`; its ``exit_code`` is 1 if any series failed.

    Raises:
        BatchError: before anything is written (OUTPUT inside INPUT, bad settings).
    """
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    import bundle

    if output_format not in FORMATS:
        raise BatchError(f"format must be one of {FORMATS}, got {output_format!r}")
    if steps < 1 or num_samples < 1 or not 0 < strength <= 1 or eta < 0:
        raise BatchError(f"need steps >= 1, num_samples >= 1, 0 < strength <= 1, eta >= 0; got "
                         f"{steps}, {num_samples}, {strength}, {eta}")
    input_path, output_dir = check_output_location(input_path, output_dir)
    try:
        from bundle.diffusion import DDIMSampler

        DDIMSampler(enhancer.schedule, num_inference_steps=steps).num_steps(strength)
    except ValueError as exc:
        raise BatchError(f"sampler settings: {exc}") from None
    software_version = software_version or f"ctv2v {bundle.__version__}"
    formats = {"dicom", "nifti"} if output_format == "both" else {output_format}
    settings = {"steps": int(steps), "eta": float(eta), "strength": float(strength),
                "num_samples": int(num_samples), "seed": int(seed)}
    # output settings of the enhancer (a re-run with another fidelity weight must not skip)
    settings.update({key: getattr(enhancer, key) for key in ("fidelity_weight", "residual") if hasattr(enhancer, key)})

    # log lines go above the progress bars instead of through them
    redirect = logging_redirect_tqdm() if progress else contextlib.nullcontext()
    with redirect, warnings.catch_warnings():
        # pydicom's warnings about invalid values quote the values (a patient name, say)
        warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
        jobs, redact = _plan(input_path, output_dir)
        rows = [job.row for job in jobs]
        output_dir.mkdir(parents=True, exist_ok=True)
        summary = output_dir / SUMMARY_NAME
        _write_summary(summary, rows)
        pending = [job for job in jobs if job.row.status == "pending"]
        logger.info("found %d series/files: %d to enhance, %d skipped, %d failed before reading", len(rows),
                    len(pending), sum(r.status == "skipped" for r in rows), sum(r.status == "failed" for r in rows))
        for job in jobs:
            if job.row.status != "pending":
                logger.info("%s: %s (%s)", job.row.label(), job.row.status, job.row.reason)

        bar = tqdm(pending, desc="series", unit="series", disable=not progress)
        for number, job in enumerate(bar, 1):
            start = time.perf_counter()
            try:
                _run_job(job, input_path, output_dir, enhancer, settings, formats, model_version,
                         software_version, progress)
            except _Blocked as exc:
                job.row.status, job.row.reason, job.row.output = "failed", str(exc), ""
            except Exception as exc:  # noqa: BLE001 - one bad series never stops the batch
                job.row.status, job.row.reason, job.row.output = "failed", redact(f"{type(exc).__name__}: {exc}"), ""
                logger.debug("%s failed:\n%s", job.row.label(), redact(traceback.format_exc()))
            job.row.seconds = f"{time.perf_counter() - start:.2f}"
            _write_summary(summary, rows)
            logger.info("[%d/%d] %s: %s%s in %s s", number, len(pending), job.row.label(), job.row.status,
                        f" ({job.row.reason})" if job.row.reason else "", job.row.seconds)
    result = BatchResult(rows, summary)
    logger.info("done: %s; summary %s", ", ".join(f"{n} {s}" for s, n in sorted(result.counts().items())), summary)
    return result


def model_version_of(path: str | os.PathLike) -> str:
    """``"<file name> sha256:<16 hex>"``: names the exact weights in the outputs' tags."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name} sha256:{digest.hexdigest()[:16]}"


def load_enhancer(model: str | os.PathLike, device: str = "auto", precision: str = "fp32",
                  fidelity_weight: float | None = None) -> tuple[Any, str]:
    """``(CTEnhancer on the device, model_version)``; ``device`` is ``auto``, ``cpu`` or ``cuda``;
    ``precision`` (``fp32``, ``bf16``, ``fp16`` on CUDA) is the autocast of the network calls;
    ``fidelity_weight`` (None: the model file's) scales a fidelity path's gates (0: spec decoder)."""
    import torch

    from bundle.inference.enhancer import CTEnhancer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BatchError("--device cuda but no CUDA device is available")
    if fidelity_weight is not None and fidelity_weight < 0:
        raise BatchError(f"--fidelity-weight must be >= 0, got {fidelity_weight}")
    settings = {} if fidelity_weight is None else {"fidelity_weight": fidelity_weight}
    enhancer = CTEnhancer.from_file(model, precision=precision, **settings).to(device).eval()
    return enhancer, model_version_of(model)
