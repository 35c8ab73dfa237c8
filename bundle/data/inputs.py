"""Finding the CT volumes under a folder: NIfTI files by name, DICOM series by their headers.

One walk for every tool that takes "a folder of CT": the batch tool (``ctv2v enhance``), the
low-dose simulator (``ctv2v simulate``) and ``configs/inference.yaml``'s ``input_dir``
(:func:`find_inputs`). Which series a tool enhances is :func:`bundle.dicom.select_reason`'s call.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bundle.data.volume_io import is_nifti
from bundle.dicom import FileProblem, SeriesInfo, discover_series, select_reason
from bundle.utils.names import uid_hash
from bundle.utils.paths import is_within

__all__ = ["FoundInputs", "find_ct_inputs", "find_inputs", "nifti_files", "series_folder"]

logger = logging.getLogger(__name__)


@dataclass
class FoundInputs:
    """What :func:`find_ct_inputs` found under a folder.

    ``nifti``: NIfTI files in walk order; ``series``: every DICOM series, selectable or not;
    ``problems``: DICOM files that belong to no series (unreadable, not DICOM, duplicates), NIfTI
    files left out.
    """

    nifti: list[Path]
    series: list[SeriesInfo]
    problems: list[FileProblem]


def _hidden(name: str) -> bool:
    return name.startswith(".")  # ".DS_Store", AppleDouble "._scan.nii.gz", ".partial" folders


def nifti_files(root: str | os.PathLike, exclude: str | os.PathLike | None = None, *,
                skip_hidden: bool = False) -> list[Path]:
    """NIfTI files at or under ``root`` in a deterministic order, ``exclude`` (e.g. an output
    folder inside the input) left out, and with ``skip_hidden`` names starting with ``.`` too."""
    root = Path(root)
    if root.is_file():
        return [root] if is_nifti(root) else []

    def kept(name: str) -> bool:
        return not (skip_hidden and _hidden(name))

    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if kept(d) and not is_within(here / d, exclude))
        found += [here / name for name in sorted(filenames) if kept(name) and is_nifti(name)]
    return found


def find_ct_inputs(root: str | os.PathLike, exclude: str | os.PathLike | None = None, *,
                   skip_hidden: bool = False) -> FoundInputs:
    """NIfTI files and DICOM series at or under ``root`` (headers only: nothing is decoded).

    ``skip_hidden`` leaves out NIfTI files with a hidden name or under a hidden folder; it is off
    for the batch tool and ``input_dir``, which list such a file (a macOS ``._scan.nii.gz`` fails
    with its reason in the summary rather than vanishing). DICOM discovery reads every file.

    Raises ``FileNotFoundError`` when ``root`` does not exist.
    """
    root = Path(root)
    nifti = nifti_files(root, exclude, skip_hidden=skip_hidden)
    series, problems = discover_series(root)
    if exclude is not None:
        for info in series:
            info.files = [f for f in info.files if not is_within(f, exclude)]
        series = [info for info in series if info.files]
    problems = [p for p in problems if not is_nifti(p.path) and not is_within(p.path, exclude)]
    return FoundInputs(nifti, series, problems)


def series_folder(info: SeriesInfo) -> Path:
    """The deepest folder holding every file of the series."""
    return Path(os.path.commonpath([str(f.parent) for f in info.files]))


def find_inputs(input_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Datalist-style items ``{"source": path}`` for ``configs/inference.yaml``'s ``input_dir``.

    Every NIfTI file, and every folder that holds exactly one selectable CT series (and no other
    series): MONAI's loaders read a folder as one series. A series sharing its folder with another
    series, or spread over folders, is left out with a warning (``ctv2v enhance`` takes any
    layout).
    """
    root = Path(input_dir)
    if not root.exists():
        raise FileNotFoundError(f"input_dir {root} does not exist")
    found = find_ct_inputs(root)
    items = [{"source": str(p)} for p in found.nifti]
    by_folder: dict[Path, int] = {}
    for info in found.series:
        for folder in {f.parent for f in info.files}:
            by_folder[folder] = by_folder.get(folder, 0) + 1
    for info in found.series:
        if select_reason(info) is not None:
            continue
        folders = {f.parent for f in info.files}
        if len(folders) == 1 and by_folder[next(iter(folders))] == 1:
            items.append({"source": str(next(iter(folders)))})
        else:
            logger.warning("series %s shares or spans folders; use `ctv2v enhance` for it", uid_hash(info.series_uid))
    return items
