"""What a batch will do: a row for everything under INPUT (series to enhance, series skipped with
the reason, unreadable files) and a job for each row still to do. Nothing is decoded here."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bundle.data.inputs import find_ct_inputs
from bundle.dicom import select_reason
from bundle.inference.batch.outputs import SeriesRow
from bundle.utils.names import uid_hash

__all__ = ["Job", "plan_batch"]


@dataclass
class Job:
    """Work behind a pending row."""

    row: SeriesRow
    files: list[Path] = field(default_factory=list)  # DICOM slices, or the one NIfTI file
    series_uid: str = ""
    study_uid: str = ""
    blocked: str | None = None  # a reason to fail without reading (an unreadable file of it)


def _series_uid_of_unreadable(path: Path) -> str | None:
    """The SeriesInstanceUID of a file discovery could not read, if its header still says it."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["SeriesInstanceUID"])
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    except Exception:  # noqa: BLE001 - it is unreadable; we only try to attribute it
        return None
    return uid if re.fullmatch(r"[0-9.]{1,64}", uid) else None


def _redactor(input_root: Path, files: Iterable[Path], identifiers: Iterable[str] = ()) -> Callable[[str], str]:
    """Strip folder paths from messages (export folders are often named after the patient), then
    any patient identifier the headers hold (a file named after the patient keeps its name)."""
    files = list(files)
    scrub = sorted({i for i in identifiers if i}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(i) for i in scrub), re.IGNORECASE) if scrub else None
    folders = {p.parent for p in files}
    for folder in list(folders):
        folders.update(folder.parents)
    pairs = [(str(p), p.name) for p in files] + [(str(f), "<folder>") for f in folders if str(f) not in ("/", ".")]
    pairs.append((str(input_root), "<input>"))
    pairs.sort(key=lambda pair: len(pair[0]), reverse=True)

    def redact(message: str) -> str:
        for old, new in pairs:
            message = message.replace(old, new)
        return pattern.sub("<patient>", message) if pattern is not None else message

    return redact


def plan_batch(input_path: Path) -> tuple[list[Job], Callable[[str], str]]:
    """Rows for everything found, and the jobs for the pending ones."""
    found = find_ct_inputs(input_path)
    nifti, series, problems = found.nifti, found.series, found.problems
    unreadable = [p for p in problems if p.kind == "unreadable"]
    all_files = [f for info in series for f in info.files] + [p.path for p in problems] + nifti
    redact = _redactor(input_path, all_files, {i for info in series for i in info.identifiers})

    by_uid: dict[str, list] = {}
    loose = []
    for problem in unreadable:
        uid = _series_uid_of_unreadable(problem.path)
        if uid:
            by_uid.setdefault(uid, []).append(problem)
        else:
            loose.append(problem)
    known_uids = {info.series_uid for info in series}

    jobs: list[Job] = []
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
        job = Job(row, list(info.files), info.series_uid, info.study_uid)
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
        jobs.append(Job(row))
    for uid, orphans in by_uid.items():
        if uid in known_uids:
            continue
        row = SeriesRow(index=len(jobs) + 1, kind="dicom", series_uid_hash=uid_hash(uid), status="failed",
                        slices=len(orphans),
                        reason=redact(f"every file of this series is unreadable, first {orphans[0].path}: "
                                      f"{orphans[0].reason}"))
        jobs.append(Job(row))
    for path in nifti:
        relative = path.relative_to(input_path) if input_path.is_dir() else Path(path.name)
        # the file name only: folder names of exports often name the patient (the hash tells apart)
        row = SeriesRow(index=len(jobs) + 1, kind="nifti", series_uid_hash=uid_hash(str(relative)),
                        modality="", description=redact(path.name))
        jobs.append(Job(row, [path]))
    return jobs, redact
