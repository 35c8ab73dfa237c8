"""Datalists: pairs found by name, split by patient, paths relative to the datalist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle.cli import main
from bundle.data.datalist import (
    SPLITS,
    find_pairs,
    load_datalist,
    make_datalist,
    patient_of,
    recorded_dose,
    split_patients,
)

# 10 patients with 1-3 pairs each (slabs, dose levels), one as DICOM folders.
PATIENTS = {f"P{n:02d}": ["", "_slab1", "_dose25_slab2"][: 1 + n % 3] for n in range(10)}
N_PAIRS = sum(len(suffixes) for suffixes in PATIENTS.values()) + 1  # 19 NIfTI pairs + 1 DICOM pair


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def make_folder(root: Path, order=1) -> Path:
    names = []
    for patient, suffixes in PATIENTS.items():
        for suffix in suffixes:
            for role in ("source", "target"):
                names.append(f"{patient}{suffix}_{role}.nii.gz")
    for name in names[::order]:  # creation order must not matter
        touch(root / name)
    for role in ("source", "target"):  # a DICOM pair: folders of slices
        touch(root / f"P10_{role}" / "IM0001.dcm")
        touch(root / f"P10_{role}" / "IM0002.dcm")
    touch(root / "P11_source.nii")  # unpaired
    touch(root / "notes.txt")
    return root


def all_entries(datalist):
    return [entry for split in SPLITS for entry in datalist[split]]


def test_pairs_are_found_by_name(tmp_path):
    pairs, unpaired = find_pairs(make_folder(tmp_path))
    assert len(pairs) == N_PAIRS
    assert pairs["P10"] == {"source": tmp_path / "P10_source", "target": tmp_path / "P10_target"}
    assert pairs["P01_slab1"]["target"] == tmp_path / "P01_slab1_target.nii.gz"
    assert unpaired == [tmp_path / "P11_source.nii"]


def test_no_patient_in_two_splits(tmp_path):
    datalist = make_datalist(make_folder(tmp_path), val_fraction=0.2, test_fraction=0.2, seed=0)
    by_split = {split: {entry["patient"] for entry in datalist[split]} for split in SPLITS}
    assert all(by_split.values())
    for a in SPLITS:
        for b in SPLITS:
            if a != b:
                assert not by_split[a] & by_split[b], (a, b)
    assert len(by_split["validation"]) == len(by_split["test"]) == 2  # 20 % of 11 patients
    entries = all_entries(datalist)
    assert len(entries) == len({(e["source"], e["target"]) for e in entries}) == N_PAIRS  # every pair once
    for entry in entries:
        assert entry["source"].startswith(entry["patient"]) and entry["target"].startswith(entry["patient"])
        assert entry["source"].replace("_source", "_target") == entry["target"]
    assert datalist["unpaired"] == ["P11_source.nii"]


def test_split_is_reproducible_and_independent_of_file_order(tmp_path):
    first = make_datalist(make_folder(tmp_path / "a"), val_fraction=0.2, test_fraction=0.2, seed=3)
    again = make_datalist(make_folder(tmp_path / "a"), val_fraction=0.2, test_fraction=0.2, seed=3)
    reordered = make_datalist(make_folder(tmp_path / "b", order=-1), val_fraction=0.2, test_fraction=0.2, seed=3)
    assert first == again == reordered
    others = [make_datalist(tmp_path / "a", val_fraction=0.2, test_fraction=0.2, seed=s) for s in range(4, 8)]
    assert any(other != first for other in others)  # the seed matters


def test_split_counts_and_limits():
    patients = [f"P{n}" for n in range(20)]
    split = split_patients(patients, 0.15, 0.15, seed=0)
    assert [len(split[s]) for s in SPLITS] == [14, 3, 3]
    assert split_patients(patients[:3], 0.1, 0.1, seed=0)["training"]  # at least one each, one left
    assert split_patients(patients[:2], 0, 0, seed=0)["training"] == patients[:2]
    with pytest.raises(ValueError, match="lower the fractions"):
        split_patients(patients[:2], 0.15, 0.15, seed=0)
    with pytest.raises(ValueError):
        split_patients(patients, 1.0, 0.0)


def test_patient_ids():
    assert patient_of("L067_full_1mm") == "L067"
    assert patient_of("sub/L067") == "L067"
    assert patient_of("L067/scan_a", r"(?P<patient>[^/]+)/") == "L067"
    assert patient_of("case-12-a", r"case-(\d+)") == "12"
    with pytest.raises(ValueError, match="does not match"):
        patient_of("x", r"case-(\d+)")


def test_patient_regex_for_one_folder_per_patient(tmp_path):
    for patient in ("L067", "L096", "L109", "L143"):
        for scan in ("a", "b"):
            touch(tmp_path / patient / f"{scan}_source.nii.gz")
            touch(tmp_path / patient / f"{scan}_target.nii.gz")
    default = make_datalist(tmp_path, val_fraction=0, test_fraction=0, seed=0)
    assert {e["patient"] for e in all_entries(default)} == {"a", "b"}  # why the override exists
    datalist = make_datalist(tmp_path, val_fraction=0.25, test_fraction=0.25, seed=0, pattern=r"(?P<patient>[^/]+)/")
    patients = {split: {e["patient"] for e in datalist[split]} for split in SPLITS}
    assert [len(patients[split]) for split in SPLITS] == [2, 1, 1]
    assert [len(datalist[split]) for split in SPLITS] == [4, 2, 2]  # both scans with their patient
    assert datalist["training"][0]["source"].endswith("/a_source.nii.gz")


def test_no_pairs_is_an_error(tmp_path):
    touch(tmp_path / "x_source.nii.gz")
    with pytest.raises(ValueError, match="no source/target pairs"):
        make_datalist(tmp_path)


def test_two_sources_for_one_stem_is_an_error(tmp_path):
    touch(tmp_path / "P1_source.nii.gz")
    touch(tmp_path / "P1_source.nii")
    with pytest.raises(ValueError, match="two sources"):
        find_pairs(tmp_path)


def test_cli_writes_relative_paths_that_load(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    output = tmp_path / "lists" / "split.json"
    assert main(["datalist", str(data), "-o", str(output), "--val", "0.2", "--test", "0.2", "--seed", "1"]) == 0
    printed = capsys.readouterr()
    assert "training" in printed.out and "wrote" in printed.out and "P11_source.nii" in printed.err
    written = json.loads(output.read_text())
    assert all(e["source"].startswith("../data/") for e in all_entries(written))
    assert not list(output.parent.glob(".*tmp*"))  # atomic write left nothing behind
    loaded = {split: load_datalist(output, split) for split in SPLITS}
    assert sum(len(v) for v in loaded.values()) == N_PAIRS
    for entry in all_entries(loaded):
        assert Path(entry["source"]).is_absolute() and Path(entry["source"]).exists()
        assert Path(entry["target"]).exists() and "patient" in entry
    # default output next to the data, paths relative to it
    assert main(["datalist", str(data)]) == 0
    assert load_datalist(data / "datalist.json", "training")


def test_cli_fails_cleanly_without_pairs(tmp_path, capsys):
    assert main(["datalist", str(tmp_path)]) == 1
    assert "no source/target pairs" in capsys.readouterr().err
    assert not (tmp_path / "datalist.json").exists()


def test_missing_file_error_names_the_path(tmp_path):
    folder = make_folder(tmp_path)
    datalist = make_datalist(folder, val_fraction=0, test_fraction=0)
    datalist["training"][2]["target"] = "gone/P99_target.nii.gz"
    path = folder / "datalist.json"
    path.write_text(json.dumps(datalist))
    with pytest.raises(FileNotFoundError, match=r"training\[2\].*gone/P99_target.nii.gz"):
        load_datalist(path)
    with pytest.raises(KeyError, match="validation"):
        json.dump({"training": []}, path.open("w"))
        load_datalist(path, "validation")
    with pytest.raises(FileNotFoundError, match=r"datalist = .*none.json'?: not found"):
        load_datalist(tmp_path / "none.json")


def test_absolute_paths_pass_through(tmp_path):
    touch(tmp_path / "a.nii.gz")
    path = tmp_path / "lists" / "d.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"training": [{"source": str(tmp_path / "a.nii.gz"), "note": 1}]}))
    assert load_datalist(path) == [{"source": str(tmp_path / "a.nii.gz"), "note": 1}]


def test_the_test_dose_is_read_from_the_simulators_record(tmp_path):
    """Reports label the test list with its dose: data simulated at 10 % must not read as 25 %."""
    demo, sample, plain = tmp_path / "demo", tmp_path / "sample", tmp_path / "plain"
    for folder in (demo, sample, plain):
        folder.mkdir()
        (folder / "datalist.json").write_text("{}")
    (demo / "demo.json").write_text(json.dumps({"settings": {"dose": 0.1, "seed": 0}}))
    (sample / "sample.json").write_text(json.dumps({"dose": 0.05}))
    assert recorded_dose(demo / "datalist.json") == 0.1
    assert recorded_dose(sample / "datalist.json") == 0.05
    assert recorded_dose(plain / "datalist.json") == 0.25  # no record: the default
    assert recorded_dose(plain / "datalist.json", default=0.5) == 0.5
    # a datalist made by hand beside the record (its test list may be a sweep dose) keeps the default
    (demo / "datalist_dose0.05.json").write_text("{}")
    assert recorded_dose(demo / "datalist_dose0.05.json") == 0.25
    (sample / "sample.json").write_text("not json")  # a damaged record is not an error here
    assert recorded_dose(sample / "datalist.json") == 0.25
