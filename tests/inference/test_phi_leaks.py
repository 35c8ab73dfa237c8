"""No patient name, ID, birth date or accession number in anything ``ctv2v enhance`` writes or
says: log lines at DEBUG, progress bars, stdout/stderr, file and folder names under OUTPUT,
summary.csv, and the failure reasons of a broken series. Every PHI field of the corpus is a
distinctive string (also the input folders are named after the patient, as real exports often
are), so any copy of one shows. tests/inference/test_batch.py checks the logs and summary of its
larger tree too; this test adds progress bars, names, the accession number and failure reasons."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from bundle.cli import main
from bundle.dicom import write_ct_series

PHI = {
    "PatientName": "Zqxname^Vwyfirst",
    "PatientID": "PIDZQX987",
    "PatientBirthDate": "19230405",
    "AccessionNumber": "ACCZQX555",
}
SECRETS = ("Zqxname", "Vwyfirst", "PIDZQX987", "19230405", "ACCZQX555", "ZQX")


def phantom(shape, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0, np.float32)
    hu[:, 8:-8, 8:-8] = 40.0 + rng.normal(0, 20, (shape[0], shape[1] - 16, shape[2] - 16))
    return np.round(hu)


def write(folder: Path, number: int, shape) -> list[Path]:
    return write_ct_series(
        phantom(shape, number), folder, spacing=(2.0, 0.7, 0.7), origin=(-20.0, -15.0, 100.0), direction=np.eye(3),
        series_number=number, series_description=f"Chest {number}",
        patient={**PHI, "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.77", "StudyDescription": "CT chest"},
    )


@pytest.fixture(scope="module")
def model(batch_model) -> Path:
    return batch_model


def run_and_check(tmp_path, model, caplog, capsys, junk_name: str) -> None:
    patient_dir = tmp_path / "input" / "Zqxname^Vwyfirst_PIDZQX987" / "ACCZQX555_19230405"
    write(patient_dir / "good", 2, (8, 32, 32))
    broken = write(patient_dir / "broken", 3, (6, 32, 32))
    broken[-1].write_bytes(broken[-1].read_bytes()[:-700])  # cut short: the series fails with a reason
    (patient_dir / junk_name).write_bytes(b"\0" * 128 + b"DICM" + b"PIDZQX987" * 20)  # junk
    output = tmp_path / "output"

    caplog.set_level(logging.DEBUG)
    code = main(["-v", "enhance", str(tmp_path / "input"), str(output), "--model", str(model), "--steps", "2",
                 "--device", "cpu", "--format", "both"])  # progress bars on
    said = capsys.readouterr()

    summary = (output / "summary.csv").read_text()
    assert code == 1 and "enhanced" in summary and "failed" in summary, summary
    names = [str(p.relative_to(output)) for p in output.rglob("*")]
    assert any(name.endswith(".dcm") for name in names) and any(".nii" in name for name in names)
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert caplog.records and said.err  # there was something to check
    texts = {"log lines": logged, "stdout": said.out, "stderr (progress bars)": said.err,
             "file and folder names": "\n".join(names), "summary.csv": summary}
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret.lower() not in text.lower(), f"{secret!r} in the {where}"


def test_nothing_written_or_said_carries_phi(tmp_path, model, caplog, capsys):
    run_and_check(tmp_path, model, caplog, capsys, junk_name="notes.dcm")


def test_a_skipped_file_named_after_the_patient(tmp_path, model, caplog, capsys):
    run_and_check(tmp_path, model, caplog, capsys, junk_name="Zqxname_notes.dcm")
