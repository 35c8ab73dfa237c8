"""Datalists: which source/target pairs train, validate and test, split by patient.

File format (JSON, MONAI's decathlon layout)::

    {"training":   [{"patient": "L067", "source": "L067_source.nii.gz", "target": "L067_target.nii.gz"}, ...],
     "validation": [...],
     "test":       [...],
     "unpaired":   ["L099_source.nii.gz"]}    # information only: files without a partner

Paths are relative to the datalist's own folder (absolute paths also work), so a data folder can
move with its datalist. ``source`` and ``target`` are NIfTI files or DICOM series folders.
Optional keys carry what a simulation knows (``ctv2v demo-data`` writes them): ``clean`` (the
noise-free volume), ``labels`` (tissue labels), ``objects`` (a JSON list of lesions and QA
inserts) and ``target_repeat`` (a second full-dose realisation); tools that do not use them
ignore them.

Naming rule used by :func:`make_datalist`: ``<stem>_source`` / ``<stem>_target``, where the name
ends in ``.nii`` / ``.nii.gz`` (files) or nothing (DICOM series folders), and source and target
share the stem and the folder. By default the patient id is the stem's prefix before the first
``_`` (``L067_slab2_source.nii.gz`` -> ``L067``). Every pair of a patient goes to one split:
neighbouring slices, or two dose levels of one scan, are near copies, and a patient in two
splits leaks training data into the evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from bundle.utils.validation import SettingError

__all__ = ["SPLITS", "DatalistKeyError", "DatalistPathError", "find_pairs", "load_datalist", "make_datalist", "patient_of",
           "recorded_dose", "split_patients"]

SPLITS = ("training", "validation", "test")
# paths resolved when present; all but source and target are optional (the simulation's truth)
PATH_KEYS = ("source", "target", "clean", "labels", "objects", "target_repeat")

_PAIR_NAME = re.compile(r"^(?P<stem>.+)_(?P<role>source|target)(?P<ext>\.nii(?:\.gz)?)?$", re.IGNORECASE)


class DatalistKeyError(SettingError, KeyError):
    """The datalist has no list of that name (a ``KeyError`` too, for callers that skip one)."""


class DatalistPathError(SettingError, FileNotFoundError):
    """A datalist, or a path in it, that does not exist (a ``FileNotFoundError`` too)."""


def load_datalist(
    path: str | os.PathLike,
    key: str = "training",
    path_keys: Sequence[str] = PATH_KEYS,
    allow_empty: bool | None = None,
) -> list[dict]:
    """The entries of list ``key`` in the datalist at ``path``, with ``path_keys`` made absolute.

    Relative paths are taken relative to the datalist's folder. Every path must exist: a missing
    one raises :class:`DatalistPathError` (a ``FileNotFoundError``) naming the datalist, the entry
    and the path. An empty list is refused unless ``allow_empty`` (default: allowed for every list
    but ``training``, which nothing can train on). Other fields (``patient``, ...) are passed
    through. Every error is one line: ``<setting> = <value>: <what is allowed>``.
    """
    path = Path(path)
    try:
        with open(path) as f:
            datalist = json.load(f)
    except FileNotFoundError:
        raise DatalistPathError(
            "datalist", str(path), "not found; a datalist JSON file (ctv2v datalist FOLDER writes one)"
        ) from None
    except IsADirectoryError:
        raise SettingError("datalist", str(path), "a datalist JSON file, not a folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SettingError("datalist", str(path), f"a JSON file; this one is not valid JSON ({error})") from None
    if not isinstance(datalist, dict) or key not in datalist:
        found = ", ".join(sorted(map(str, datalist))) if isinstance(datalist, dict) else type(datalist).__name__
        raise DatalistKeyError("datalist", str(path), f"a JSON object with a {key!r} list (found: {found or 'nothing'})")
    entries = datalist[key]
    if not isinstance(entries, list):
        raise SettingError(f"datalist {path}: {key}", entries, "a list of {'source': ..., 'target': ...} entries")
    if allow_empty is None:
        allow_empty = key != "training"
    if not entries and not allow_empty:
        raise SettingError(
            f"datalist {path}: {key}", entries, "at least one {'source': ..., 'target': ...} entry to train on"
        )
    base = path.parent
    resolved = []
    for index, entry in enumerate(entries):
        where = f"datalist {path}: {key}[{index}]"
        if not isinstance(entry, dict):
            raise SettingError(where, entry, "a dict like {'source': ..., 'target': ...}")
        item = dict(entry)
        for path_key in path_keys:
            if path_key not in item:
                continue
            value = item[path_key]
            if not isinstance(value, str):
                raise SettingError(f"{where}.{path_key}", value, "a path string")
            full = Path(value) if os.path.isabs(value) else base / value
            if not full.exists():
                raise DatalistPathError(
                    f"{where}.{path_key}", value,
                    f"an existing NIfTI file or DICOM folder (relative to the datalist's folder); {full} does not exist",
                )
            item[path_key] = str(full)
        resolved.append(item)
    return resolved


# where the simulators record the dose of the ``datalist.json`` they write beside it
# (``ctv2v demo-data``: demo.json; ``ctv2v sample-data``: sample.json)
_DOSE_RECORDS = (("demo.json", ("settings", "dose")), ("sample.json", ("dose",)))


def recorded_dose(path: str | os.PathLike, default: float = 0.25) -> float:
    """The dose of the ``test`` list of the datalist at ``path``, as the simulator that wrote it
    recorded it, else ``default``. Only a simulator's own ``datalist.json`` is read this way: a
    datalist made by hand beside it (e.g. one whose test list is a sweep dose) keeps ``default``.
    Reports label their rows with it, so data simulated at 10 % is not reported as 25 %."""
    path = Path(path)
    if path.name != "datalist.json":
        return default
    for name, keys in _DOSE_RECORDS:
        try:
            value = json.loads((path.parent / name).read_text())
            for key in keys:
                value = value[key]
            return float(value)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return default


def find_pairs(folder: str | os.PathLike) -> tuple[dict[str, dict[str, Path]], list[Path]]:
    """Walk ``folder``: ``({stem_path: {"source": path, "target": path}}, unpaired paths)``.

    ``stem_path`` is the pair's stem with its folder relative to ``folder`` (POSIX separators,
    e.g. ``"L067/full_1mm"``). Folders named ``*_source`` / ``*_target`` are taken as DICOM series
    and not searched further; hidden entries (``.*``) are skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    found: dict[str, dict[str, Path]] = defaultdict(dict)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames.sort()
        candidates = []
        for name in list(dirnames):
            if name.startswith("."):
                dirnames.remove(name)
                continue
            match = _PAIR_NAME.match(name)
            if match and not match["ext"]:
                dirnames.remove(name)  # a series folder: its files are slices, not pairs
                candidates.append((name, match))
        for name in sorted(filenames):
            match = _PAIR_NAME.match(name)
            if match and match["ext"] and not name.startswith("."):
                candidates.append((name, match))
        for name, match in candidates:
            stem = (here / match["stem"]).relative_to(root).as_posix()
            role = match["role"].lower()
            if role in found[stem]:
                raise ValueError(
                    f"two {role}s for {stem!r} in {root}: {found[stem][role].name} and {name}; keep one"
                )
            found[stem][role] = here / name
    pairs = {stem: roles for stem, roles in found.items() if len(roles) == 2}
    unpaired = sorted(path for roles in found.values() if len(roles) == 1 for path in roles.values())
    return dict(sorted(pairs.items())), unpaired


def patient_of(stem: str, pattern: str | None = None) -> str:
    """The patient id of a pair stem (``"L067/full_1mm"``-style, see :func:`find_pairs`).

    Default: the prefix before the first ``_`` of the stem's last component. With ``pattern``, a
    regular expression matched (``re.match``) against the whole relative stem; the id is its
    group ``patient`` if it has one, else group 1, else the whole match. For one folder per
    patient: ``"(?P<patient>[^/]+)/"``.
    """
    if pattern is None:
        return stem.rsplit("/", 1)[-1].split("_", 1)[0]
    match = re.match(pattern, stem)
    if not match:
        raise ValueError(f"patient pattern {pattern!r} does not match {stem!r}")
    if "patient" in match.re.groupindex:
        patient = match["patient"]
    elif match.re.groups:
        patient = match[1]
    else:
        patient = match[0]
    if not patient:
        raise ValueError(f"patient pattern {pattern!r} gives an empty patient id for {stem!r}")
    return patient


def _count(fraction: float, total: int) -> int:
    return 0 if fraction <= 0 else max(1, round(fraction * total))


def split_patients(
    patients: Sequence[str], val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> dict[str, list[str]]:
    """Assign each patient to one of :data:`SPLITS`; the same inputs give the same split.

    Patients are ranked by a hash of ``(seed, patient id)``: the first ``round(test_fraction * n)``
    go to test, the next ``round(val_fraction * n)`` to validation (at least one each when the
    fraction is positive), the rest to training. The rank of a patient does not depend on the
    other patients or on file order, so adding data moves only the few patients at the split
    boundaries. Still, keep the datalist a model was trained with rather than regenerating it.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {fraction}")
    unique = sorted(set(patients))
    n_test, n_val = _count(test_fraction, len(unique)), _count(val_fraction, len(unique))
    if unique and n_test + n_val >= len(unique):
        raise ValueError(
            f"{len(unique)} patient(s) cannot give {n_val} validation and {n_test} test patient(s) and "
            "keep one for training; lower the fractions (e.g. --val 0 --test 0)"
        )

    def rank(patient: str) -> str:
        return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()

    order = sorted(unique, key=lambda p: (rank(p), p))
    return {
        "test": sorted(order[:n_test]),
        "validation": sorted(order[n_test : n_test + n_val]),
        "training": sorted(order[n_test + n_val :]),
    }


def make_datalist(
    folder: str | os.PathLike,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    pattern: str | None = None,
    relative_to: str | os.PathLike | None = None,
) -> dict[str, list]:
    """Find the pairs under ``folder`` and split them by patient (see the module docstring).

    Args:
        folder: searched recursively (:func:`find_pairs`).
        val_fraction, test_fraction: fractions of patients (not of pairs) for those splits.
        seed: the split is a function of the seed and the patient ids only.
        pattern: patient-id regular expression (:func:`patient_of`); default: prefix before ``_``.
        relative_to: the folder the datalist will be saved in; paths are written relative to it
            (default ``folder``).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "unpaired": [...]}``; entries
        ``{"patient", "source", "target"}`` sorted by patient then stem. ``unpaired`` lists the
        files without a partner (excluded). No pairs at all is an error.
    """
    root = Path(folder)
    base = Path(relative_to) if relative_to is not None else root
    pairs, unpaired = find_pairs(root)
    if not pairs:
        raise ValueError(
            f"no source/target pairs under {root} (expected <patient>[_...]_source.nii[.gz] with a "
            f"matching _target, or DICOM folders named *_source / *_target); unpaired: {len(unpaired)}"
        )
    patients = {stem: patient_of(stem, pattern) for stem in pairs}
    splits = split_patients(list(patients.values()), val_fraction, test_fraction, seed)
    split_of = {patient: split for split, members in splits.items() for patient in members}

    def rel(path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()

    datalist: dict[str, list] = {split: [] for split in SPLITS}
    for stem, roles in sorted(pairs.items(), key=lambda item: (patients[item[0]], item[0])):
        patient = patients[stem]
        datalist[split_of[patient]].append(
            {"patient": patient, "source": rel(roles["source"]), "target": rel(roles["target"])}
        )
    datalist["unpaired"] = [rel(path) for path in unpaired]
    return datalist
