"""Phantoms look like CT and differ per seed; the demo dataset is complete, readable, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bundle.data.phantom import LABELS, flat_region, make_phantom


@pytest.fixture(scope="module")
def phantoms():
    return [make_phantom(seed) for seed in range(3)]  # default 32 x 128 x 128


def test_different_seeds_give_different_patients(phantoms):
    a, b, _ = phantoms
    assert not np.array_equal(a.hu, b.hu)
    assert np.mean(np.abs(a.hu - b.hu)) > 20.0  # different anatomy, not just texture
    np.testing.assert_array_equal(make_phantom(0).hu, a.hu)


def test_hu_ranges_cover_air_lung_fat_soft_tissue_and_bone(phantoms):
    for phantom in phantoms:
        hu = phantom.hu
        assert hu.dtype == np.float32 and hu.shape == (32, 128, 128)
        assert phantom.spacing == (2.5, 2.7, 2.7)
        fraction = lambda low, high: float(np.mean((hu >= low) & (hu <= high)))  # noqa: E731
        assert fraction(-1001, -990) > 0.2  # air around the body
        assert fraction(-950, -750) > 0.005  # lung
        assert fraction(-130, -70) > 0.02  # fat
        assert fraction(20, 80) > 0.1  # soft tissue
        assert fraction(700, 1300) > 0.001  # cortical bone
        assert hu.min() >= -1001 and hu.max() < 1400
        assert np.all(hu[:, 0, :] < -990) and np.all(hu[:, :, 0] < -990)  # air at the edges
        for organ in ("liver", "spleen", "kidney", "lung", "bone", "fat", "muscle"):
            assert np.any(phantom.labels == LABELS[organ]), organ
        liver = hu[flat_region(phantom)]
        assert 45 < float(np.median(liver)) < 75


def test_lesions_are_small_and_low_contrast(phantoms):
    lesions = [lesion for phantom in phantoms for lesion in phantom.lesions]
    assert len(lesions) >= 3
    for lesion in lesions:
        assert 2.0 <= lesion["radius_mm"] <= 10.0
        assert 5.0 <= abs(lesion["contrast_hu"]) <= 20.0


def test_liver_lesions_replace_liver_only():
    """A lesion sphere near the liver's edge stops at the organs painted over the liver's ellipse
    after it (the demo's patient demo006 had one reach into a kidney and the vena cava). Lesions
    are drawn last, so the same seed without them gives the labels they were painted into."""
    seed = int(np.random.SeedSequence([0, 6]).generate_state(2)[0])  # demo006's anatomy
    with_lesions = make_phantom(seed).labels
    without = make_phantom(seed, num_lesions=(0, 0)).labels
    changed = with_lesions != without
    assert changed.any()
    assert set(np.unique(without[changed])) == {LABELS["liver"]}
    assert set(np.unique(with_lesions[changed])) == {LABELS["lesion"]}


def test_consecutive_slices_are_coherent_and_change_along_z(phantoms):
    for phantom in phantoms:
        hu = phantom.hu.reshape(phantom.hu.shape[0], -1)
        neighbours = [np.corrcoef(hu[k], hu[k + 1])[0, 1] for k in range(len(hu) - 1)]
        assert min(neighbours) > 0.9
        assert np.corrcoef(hu[0], hu[-1])[0, 1] < min(neighbours)  # anatomy evolves along z
        organ_area = (phantom.labels == LABELS["liver"]).sum(axis=(1, 2))
        assert organ_area.max() > organ_area.min()  # organs change size along z


def test_custom_shape_and_spacing():
    phantom = make_phantom(4, shape=(5, 48, 64), spacing=(5.0, 7.2, 5.4))
    assert phantom.hu.shape == phantom.labels.shape == (5, 48, 64)
    assert phantom.spacing == (5.0, 7.2, 5.4)


# ------------------------------------------------------------------------------ demo dataset

TINY = ["--num-volumes", "3", "--slices", "8", "--size", "64", "--seed", "0"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from bundle.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo-data", str(out), *TINY]) == 0
    return out


def test_demo_writes_pairs_dicom_and_datalist(demo):
    from bundle.data.volume_io import load_ct

    datalist = json.loads((demo / "datalist.json").read_text())
    splits = {split: [e["patient"] for e in datalist[split]] for split in ("training", "validation", "test")}
    assert sorted(sum(splits.values(), [])) == ["demo000", "demo001", "demo002", "qa000"]
    assert [len(splits[k]) for k in ("training", "validation", "test")] == [1, 1, 2]
    assert splits["test"][-1] == "qa000"  # the QA cylinder is a test volume
    for patient in ("demo000", "demo001", "demo002"):
        for member in ("source", "target"):
            assert (demo / f"{patient}_{member}.nii.gz").is_file()

    test_entry = datalist["test"][0]
    patient = test_entry["patient"]
    assert test_entry["source"] == f"dicom/{patient}"
    dicom_sources = [e for split in ("training", "validation", "test") for e in datalist[split]
                     if e["source"].startswith("dicom/")]
    assert len(dicom_sources) == 2  # the test patient and one training patient

    series = load_ct(demo / "dicom" / patient)
    nifti = load_ct(demo / f"{patient}_source.nii.gz")
    target = load_ct(demo / f"{patient}_target.nii.gz")
    assert series.hu.shape == nifti.hu.shape == (8, 64, 64)
    assert np.max(np.abs(series.hu - nifti.hu)) <= 0.5  # int16 rounding at most
    np.testing.assert_allclose(series.affine_ras, nifti.affine_ras, atol=1e-3)
    np.testing.assert_allclose(target.affine_ras, nifti.affine_ras, atol=1e-6)
    np.testing.assert_allclose(nifti.spacing, (2.5, 5.4, 5.4), atol=1e-5)
    # the source is the noisier member of the pair
    assert np.std(series.hu - target.hu) > 5.0

    manifest = json.loads((demo / "demo.json").read_text())
    assert manifest["settings"]["num_volumes"] == 3
    assert all((demo / f).is_file() for f in manifest["files"])
    for record in manifest["patients"].values():
        assert record["noise_sigma_source_hu"] > record["noise_sigma_target_hu"] > 0


def test_demo_writes_what_the_simulation_knows(demo):
    """Clean truth, labels and objects for every volume; a second full-dose realisation and the
    dose sweep for the test volumes; all loadable through the datalist."""
    from bundle.data.datalist import load_datalist
    from bundle.data.phantom import LABELS
    from bundle.data.volume_io import load_ct

    datalist = json.loads((demo / "datalist.json").read_text())
    assert {"test_dose0.5", "test_dose0.1", "test_dose0.05"} <= set(datalist)
    tests = load_datalist(demo / "datalist.json", "test")
    for entry in tests:
        clean, target = load_ct(entry["clean"]).hu, load_ct(entry["target"]).hu
        repeat, labels = load_ct(entry["target_repeat"]).hu, load_ct(entry["labels"]).hu
        assert clean.shape == target.shape == repeat.shape == labels.shape
        body = labels > 0
        # two full-dose realisations: the same scan, independent noise of the same size
        noise_a, noise_b = (target - clean)[body], (repeat - clean)[body]
        assert abs(noise_a.std() - noise_b.std()) < 0.3 * noise_a.std()
        assert abs(np.corrcoef(noise_a, noise_b)[0, 1]) < 0.2
        objects = json.loads(Path(entry["objects"]).read_text())
        if entry["patient"] == "qa000":
            assert [i["name"] for i in objects["inserts"]] == ["air", "fat", "water", "soft tissue", "bone 700", "bone 1200"]
            assert {d["contrast_hu"] for d in objects["lesions"]} == {5.0, 10.0, 15.0}
            assert (labels == LABELS["water"]).any()
    # the sweep's sources get noisier as the dose falls
    sigma = {}
    for dose in (0.5, 0.1, 0.05):
        entry = next(e for e in load_datalist(demo / "datalist.json", f"test_dose{dose:g}") if e["patient"] == "qa000")
        clean = load_ct(entry["clean"]).hu
        sigma[dose] = float((load_ct(entry["source"]).hu - clean)[load_ct(entry["labels"]).hu == LABELS["water"]].std())
    assert sigma[0.5] < sigma[0.1] < sigma[0.05]


def test_demo_phantom_redraws_the_anatomy_each_volume_was_simulated_from(demo):
    """More noise realisations of a volume (scripts/realisation_spread.py) need its phantom: the
    one redrawn from the manifest's settings scans to the dataset's own clean truth, bit for bit."""
    from bundle.data.demo import demo_patients, demo_phantom
    from bundle.data.simulate import noise_free_scan
    from bundle.data.volume_io import load_ct

    settings = json.loads((demo / "demo.json").read_text())["settings"]
    datalist = json.loads((demo / "datalist.json").read_text())
    patients, splits = demo_patients(settings)
    assert {split: splits[split] for split in ("training", "validation", "test")} == {
        split: [e["patient"] for e in datalist[split]] for split in ("training", "validation", "test")}
    for patient in ("qa000", datalist["training"][0]["patient"]):
        phantom = demo_phantom(settings, patient)
        clean = noise_free_scan(phantom.hu, settings["spacing_mm"])
        np.testing.assert_array_equal(clean, load_ct(demo / f"{patient}_clean.nii.gz").hu)
    with pytest.raises(ValueError, match="no patient 'demo999'.*demo000"):
        demo_phantom(settings, "demo999")


def test_demo_datalist_loads_with_the_datalist_module(demo):
    import bundle.data.datalist as datalist
    for split in ("training", "validation", "test"):
        for entry in datalist.load_datalist(demo / "datalist.json", split):
            assert entry["source"] and entry["target"]


def test_demo_second_run_is_skipped_and_force_rebuilds(demo, capsys):
    from bundle.cli import main

    manifest = demo / "demo.json"
    stamp = manifest.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["demo-data", str(demo), *TINY]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert manifest.stat().st_mtime_ns == stamp

    # other settings are a different dataset: rebuilt, stale files of the old one removed
    assert main(["demo-data", str(demo), "--num-volumes", "2", "--slices", "8", "--size", "64"]) == 0
    assert not (demo / "demo002_source.nii.gz").exists()
    assert json.loads(manifest.read_text())["settings"]["num_volumes"] == 2
    assert main(["demo-data", str(demo), *TINY, "--force"]) == 0
    assert (demo / "demo002_source.nii.gz").is_file()
    assert json.loads(manifest.read_text())["settings"]["num_volumes"] == 3


# ------------------------------------------------------------------------------ QA cylinders


def test_seeded_qa_cylinders_vary_but_keep_the_layout():
    """The test phantom stays the one deterministic cylinder; a seed draws another of the same kind
    (what training and validation get): other size and values, the same six inserts, HU as recorded."""
    from bundle.data.phantom import QA_INSERTS, make_qa_phantom

    shape, spacing = (4, 96, 96), (2.5, 3.6, 3.6)
    canonical = make_qa_phantom(shape, spacing)
    np.testing.assert_array_equal(canonical.hu, make_qa_phantom(shape, spacing, seed=None).hu)
    variants = [make_qa_phantom(shape, spacing, seed=s) for s in (1, 2)]
    np.testing.assert_array_equal(variants[0].hu, make_qa_phantom(shape, spacing, seed=1).hu)
    assert not np.array_equal(variants[0].hu, variants[1].hu)
    for phantom in variants:
        assert not np.array_equal(phantom.hu, canonical.hu)
        assert [i["name"] for i in phantom.inserts] == list(QA_INSERTS)
        for insert in phantom.inserts:
            nominal = QA_INSERTS[insert["name"]][0]
            assert insert["hu"] >= -1000.0
            assert abs(insert["hu"] - nominal) <= max(10.0, 0.1 * abs(nominal)) + 1e-6
            row, col = (int(round(v)) for v in insert["centre"])
            assert abs(phantom.hu[2, row, col] - insert["hu"]) < 5.0, insert  # the recorded HU is what is painted
        assert len(phantom.lesions) == 8 and all(5.0 * 0.8 - 1e-6 <= d["contrast_hu"] <= 15.0 * 1.5 + 1e-6
                                                 for d in phantom.lesions)
        assert flat_region(phantom).sum() > 500  # a uniform body to measure noise in


def test_demo_qa_volumes_go_to_training_and_validation_and_leave_the_test_split(demo, tmp_path):
    from bundle.cli import main
    from bundle.data.volume_io import load_ct

    out = tmp_path / "with_qa"
    assert main(["demo-data", str(out), *TINY, "--qa-volumes", "2"]) == 0
    datalist = json.loads((out / "datalist.json").read_text())
    splits = {split: [e["patient"] for e in datalist[split]] for split in ("training", "validation", "test")}
    assert "qa001" in splits["validation"] and "qa002" in splits["training"] and "qa000" in splits["test"]
    reference = json.loads((demo / "datalist.json").read_text())
    for split in ("training", "validation", "test"):  # the patients keep their split
        assert [p for p in splits[split] if p not in ("qa001", "qa002")] == [e["patient"] for e in reference[split]]
    for entry in reference["test"]:  # the same test files, noise draws included
        for key in ("source", "target", "clean"):
            np.testing.assert_array_equal(load_ct(out / entry[key]).hu, load_ct(demo / entry[key]).hu)
    assert json.loads((out / "demo.json").read_text())["settings"]["qa_volumes"] == 2
    assert "qa_volumes" not in json.loads((demo / "demo.json").read_text())["settings"]  # earlier datasets stay valid


def test_demo_qa_validation_adds_validation_cylinders_and_changes_nothing_else():
    """``--qa-validation M``: M more random cylinders, all in validation, after the --qa-volumes
    ones; every other patient keeps its index (so its phantom and noise) and its split."""
    from bundle.data.demo import _draw_phantom, demo_patients, demo_settings

    base = demo_settings(num_volumes=4, slices=8, size=64, qa_volumes=3)
    more = demo_settings(num_volumes=4, slices=8, size=64, qa_volumes=3, qa_validation=2)
    assert "qa_validation" not in base and more["qa_validation"] == 2  # earlier datasets stay complete
    patients, splits = demo_patients(base)
    patients_more, splits_more = demo_patients(more)
    assert patients_more == [*patients, "qa004", "qa005"]
    assert splits_more["validation"] == [*splits["validation"], "qa004", "qa005"]
    assert splits_more["training"] == splits["training"] and splits_more["test"] == splits["test"]
    added = [_draw_phantom(more, patients_more.index(p), p)[0] for p in ("qa004", "qa005")]
    known = [_draw_phantom(base, patients.index(p), p)[0] for p in ("qa001", "qa002", "qa003")]
    assert all(a.inserts and not any(np.array_equal(a.hu, k.hu) for k in known) for a in added)  # fresh draws


def test_demo_rejects_a_negative_qa_validation_count(tmp_path, capsys):
    from bundle.cli import main

    assert main(["demo-data", str(tmp_path / "x"), *TINY, "--qa-validation", "-2"]) == 2
    assert "qa_validation must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_demo_rejects_a_negative_qa_volume_count(tmp_path, capsys):
    from bundle.cli import main

    assert main(["demo-data", str(tmp_path / "x"), *TINY, "--qa-volumes", "-1"]) == 2
    assert "qa_volumes must be >= 0" in capsys.readouterr().err


def test_demo_records_photon_starvation_only_when_asked(tmp_path, capsys):
    from bundle.cli import main
    from bundle.data.demo import demo_settings

    assert "reading_i0" not in demo_settings()  # datasets made before the setting stay complete
    assert demo_settings(reading_i0=3e4)["reading_i0"] == 3e4
    assert main(["demo-data", str(tmp_path / "x"), *TINY, "--reading-i0", "-1"]) == 2
    assert "reading_i0 must be positive" in capsys.readouterr().err
