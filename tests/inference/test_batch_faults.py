"""``ctv2v enhance`` under faults: SIGKILL mid-batch, a second process on the same OUTPUT, a full
disk. Nothing that looks finished is incomplete, the input is never touched, and a re-run
completes the rest with the same pixels as an uninterrupted run."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from bundle.cli import main
from bundle.inference.batch import DONE_MARKER
from tests.inference.test_batch import tree_hashes, write_series
from tests.inference.test_inference_config import build_tiny_model

REPO = Path(__file__).resolve().parents[2]
STUDY = "1.2.826.0.1.3680043.8.498.4242"
SERIES = 4
STEPS = 60  # long enough for a kill to land inside a series (about a second each on 2 cores)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "input"
    for number in range(1, SERIES + 1):
        write_series(root / f"s{number}", number, STUDY)
    return root


def command(input_dir: Path, output: Path, model_path: Path, steps: int = STEPS) -> list[str]:
    return ["enhance", str(input_dir), str(output), "--model", str(model_path), "--steps", str(steps),
            "--device", "cpu", "--no-progress"]


def spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # one thread: as the tests run
    return subprocess.Popen([sys.executable, "-m", "bundle", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def complete_looking(output: Path) -> list[Path]:
    """Folders that look like finished series: no staging suffix, holding DICOM files."""
    return sorted({p.parent for p in output.rglob("*.dcm") if not p.parent.name.endswith(".partial")})


def at_kill_point(output: Path, finished: int) -> bool:
    """While the batch runs: ``finished`` series look complete and the next one's staging folder
    exists. The walk races the batch's renames, so a folder gone mid-walk means "look again"."""
    try:
        return len(complete_looking(output)) >= finished and bool(list(output.rglob("*.partial")))
    except FileNotFoundError:  # a staging folder renamed into place while rglob listed it
        return False


def pixels(output: Path) -> dict[str, np.ndarray]:
    """Enhanced pixels by source series number (the folder name starts with it)."""
    out = {}
    for folder in complete_looking(output):
        datasets = sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda ds: int(ds.InstanceNumber))
        out[folder.name.split("_")[0]] = np.stack([ds.pixel_array for ds in datasets])
    return out


@pytest.fixture(scope="module")
def uninterrupted(tree, model, tmp_path_factory) -> dict[str, np.ndarray]:
    output = tmp_path_factory.mktemp("uninterrupted") / "out"
    run = spawn(command(tree, output, model))
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-2000:]
    result = pixels(output)
    assert len(result) == SERIES
    return result


@pytest.mark.parametrize("kill_seed", [0, 1, 5])  # 1, 0 and 2 series finished before the kill
def test_sigkill_mid_batch_then_rerun_completes_with_the_same_pixels(tree, model, uninterrupted, tmp_path, kill_seed):
    before = tree_hashes(tree)
    output = tmp_path / "out"
    run = spawn(command(tree, output, model))
    # kill at a moment drawn from the seed: inside series k + 1 (its staging folder written) after
    # k series are complete, plus a random fraction of a second
    draw = random.Random(kill_seed)
    finished_before_kill = draw.choice([0, 1, 2])
    deadline = time.monotonic() + 300
    while run.poll() is None and time.monotonic() < deadline:
        if at_kill_point(output, finished_before_kill):
            time.sleep(draw.uniform(0.0, 0.3))
            break
        time.sleep(0.02)
    assert run.poll() is None, "the batch finished before the kill point: make the series slower"
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    killed = run.returncode == -signal.SIGKILL
    print(f"kill seed {kill_seed}: killed {killed} with {len(complete_looking(output))} series "
          f"complete, staging folder left: {bool(list(output.rglob('*.partial')))}")

    # whatever looks complete is complete: every such folder has its marker and all its slices
    for folder in complete_looking(output):
        assert (folder / DONE_MARKER).is_file(), f"{folder} looks finished without its completion marker"
        assert len(list(folder.glob("*.dcm"))) == 10

    assert main(command(tree, output, model)) == 0  # the re-run, in this process (one thread too)
    assert pixels(output).keys() == uninterrupted.keys()
    for number, array in pixels(output).items():
        np.testing.assert_array_equal(array, uninterrupted[number])
    assert not list(output.rglob("*.partial"))
    assert tree_hashes(tree) == before


def test_second_process_on_the_same_output_is_refused(tree, model, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    hold = ("import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from pathlib import Path; from bundle.inference.batch.lock import output_lock\n"
            "with output_lock(Path(sys.argv[2])):\n print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(REPO), str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(command(tree, output, model)) == 2
        message = capsys.readouterr().err
        assert "being written by another ctv2v enhance (pid" in message and str(holder.pid) in message
        assert not complete_looking(output) and not (output / "summary.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(command(tree, output, model, steps=2)) == 0


def test_full_disk_mid_series_fails_that_series_and_leaves_nothing_half_written(tree, model, tmp_path, monkeypatch):
    from bundle.dicom import derived

    real = derived.write_derived_series
    calls = {"n": 0}

    def write_then_fill_the_disk(hu, volume, out_dir, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second series: a few files, then ENOSPC
            real(hu[:3], _first_slices(volume, 3), out_dir, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(hu, volume, out_dir, **kwargs)

    monkeypatch.setattr(derived, "write_derived_series", write_then_fill_the_disk)
    before = tree_hashes(tree)
    output = tmp_path / "out"
    assert main(command(tree, output, model, steps=2)) == 1
    summary = (output / "summary.csv").read_text()
    assert "No space left on device" in summary
    assert len(complete_looking(output)) == SERIES - 1
    for folder in complete_looking(output):
        assert (folder / DONE_MARKER).is_file()
    assert not list(output.rglob("*.partial"))
    assert tree_hashes(tree) == before


def test_unwritable_summary_stops_the_batch_with_one_line(tree, model, tmp_path, monkeypatch, capsys):
    from bundle.inference.batch import run

    real, calls = run.write_summary, {"n": 0}

    def failing(path, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        real(path, rows)

    monkeypatch.setattr(run, "write_summary", failing)
    output = tmp_path / "out"
    assert main(command(tree, output, model, steps=2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("cannot write" in line and "Read-only file system" in line for line in err)
    for folder in complete_looking(output):  # the one finished before it is complete
        assert (folder / DONE_MARKER).is_file()


def _first_slices(volume, n: int):
    from dataclasses import replace

    return replace(volume, hu=volume.hu[:n], slice_files=volume.slice_files[:n], slice_sop_uids=volume.slice_sop_uids[:n])
