"""The one input walk (bundle.data.inputs) and the rule its callers differ in: hidden names.

The batch tool and inference.yaml's ``input_dir`` list a dot-named NIfTI file (a macOS
``._scan.nii.gz`` then fails with its reason in summary.csv instead of vanishing);
``ctv2v simulate`` leaves hidden names out. File contents are never read here: names only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bundle.commands.simulate import find_inputs as simulate_inputs
from bundle.data.inputs import find_ct_inputs, find_inputs, nifti_files
from bundle.inference.batch.plan import plan_batch

NAMES = ["b/scan.nii.gz", "._scan.nii.gz", ".cache/other.nii", "a/notes.txt"]


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "in"
    for name in NAMES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"not a real volume")
    return root


def names(paths, root):
    return [str(Path(p).relative_to(root)) for p in paths]


def test_nifti_files_in_walk_order_hidden_only_when_asked(tree):
    assert names(nifti_files(tree), tree) == ["._scan.nii.gz", ".cache/other.nii", "b/scan.nii.gz"]
    assert names(nifti_files(tree, skip_hidden=True), tree) == ["b/scan.nii.gz"]
    assert names(nifti_files(tree, exclude=tree / "b"), tree) == ["._scan.nii.gz", ".cache/other.nii"]
    assert nifti_files(tree / "b" / "scan.nii.gz") == [tree / "b" / "scan.nii.gz"]


def test_nifti_files_are_no_dicom_problems(tree):
    found = find_ct_inputs(tree)
    assert found.series == []
    assert names([p.path for p in found.problems], tree) == ["a/notes.txt"]


def test_batch_tool_and_input_dir_list_hidden_nifti(tree):
    jobs, _ = plan_batch(tree)
    assert [job.row.description for job in jobs if job.row.kind == "nifti"] == [
        "._scan.nii.gz", "other.nii", "scan.nii.gz"]
    assert names([item["source"] for item in find_inputs(tree)], tree) == [
        "._scan.nii.gz", ".cache/other.nii", "b/scan.nii.gz"]


def test_simulate_leaves_hidden_names_out(tree):
    inputs, problems = simulate_inputs(tree)
    assert [item.path for item in inputs] == [tree / "b" / "scan.nii.gz"]
    assert problems == []
