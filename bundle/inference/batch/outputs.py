"""What the batch tool writes and how it names it: ``summary.csv`` rows, output folders, the
completion marker. Every name is made from untrusted DICOM text and ends in a hash of the UID, so
it cannot escape OUTPUT and two series never share a folder (layout: :mod:`bundle.inference.batch`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from bundle.utils.io import atomic_write_text
from bundle.utils.names import safe_name, uid_hash

__all__ = [
    "DONE_MARKER",
    "ENHANCED_NIFTI",
    "PARTIAL_SUFFIX",
    "SUMMARY_COLUMNS",
    "SUMMARY_NAME",
    "UNCERTAINTY_NIFTI",
    "BatchResult",
    "SeriesRow",
    "nifti_folder_name",
    "read_done_marker",
    "series_folder_name",
    "study_folder_name",
    "write_summary",
]

SUMMARY_NAME = "summary.csv"
DONE_MARKER = "ctv2v-done.json"
PARTIAL_SUFFIX = ".partial"
ENHANCED_NIFTI = "enhanced.nii.gz"
UNCERTAINTY_NIFTI = "uncertainty.nii.gz"
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


def study_folder_name(study_description: str, study_uid: str) -> str:
    return f"{safe_name(study_description, 'study')}_{uid_hash(study_uid)}"


def series_folder_name(row: SeriesRow, description: str) -> str:
    number = safe_name(row.series_number, "x", 12)
    return f"{number}_{safe_name(description, 'series')}_{row.series_uid_hash}"


def nifti_folder_name(file_name: str, row: SeriesRow) -> str:
    stem = file_name
    for suffix in (".nii.gz", ".nii"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return f"{safe_name(stem, 'volume')}_{row.series_uid_hash}"


def read_done_marker(folder: Path) -> dict | None:
    """The completion marker of a series folder, or None when it is missing or not ours."""
    try:
        marker = json.loads((folder / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("status") == "enhanced" else None


def write_summary(path: Path, rows: list[SeriesRow]) -> None:
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
