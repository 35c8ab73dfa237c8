"""Running a batch: one loaded enhancer over every planned series, each written into a staging
folder and renamed into place when whole, ``summary.csv`` rewritten after every series."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from bundle.inference.batch.lock import OutputInUse, output_lock
from bundle.inference.batch.outputs import (
    DONE_MARKER,
    ENHANCED_NIFTI,
    PARTIAL_SUFFIX,
    SUMMARY_NAME,
    UNCERTAINTY_NIFTI,
    BatchResult,
    nifti_folder_name,
    read_done_marker,
    series_folder_name,
    study_folder_name,
    write_summary,
)
from bundle.inference.batch.plan import Job, plan_batch
from bundle.inference.orientation import network_layout
from bundle.utils.io import atomic_write_json
from bundle.utils.paths import is_within

__all__ = ["FORMATS", "BatchError", "check_output_location", "load_enhancer", "model_version_of", "run_batch"]

logger = logging.getLogger(__name__)

FORMATS = ("dicom", "nifti", "both")


class BatchError(ValueError):
    """The batch cannot start (bad INPUT/OUTPUT, settings); nothing was written."""


def check_output_location(input_path: str | os.PathLike, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``(input, output)`` resolved; raises :class:`BatchError` if OUTPUT is INPUT or inside it."""
    input_path, output_dir = Path(input_path), Path(output_dir)
    if not input_path.exists():
        raise BatchError(f"INPUT {input_path} does not exist")
    if output_dir.exists() and not output_dir.is_dir():
        raise BatchError(f"OUTPUT {output_dir} exists and is not a folder")
    if input_path.is_dir() and is_within(output_dir, input_path):
        raise BatchError(
            f"OUTPUT {output_dir} is inside INPUT {input_path}: nothing may be written into the input tree; "
            "choose an output folder outside it"
        )
    if input_path.is_file() and Path(os.path.realpath(output_dir)) == Path(os.path.realpath(input_path)):
        raise BatchError(f"OUTPUT {output_dir} is the input file")
    return input_path, output_dir


def _output_folder(job: Job, output_dir: Path) -> Path:
    if job.row.kind == "nifti":
        relative = Path("nifti") / nifti_folder_name(job.files[0].name, job.row)
    else:
        import pydicom

        from bundle.dicom.derived import _dicom_text

        header = pydicom.dcmread(job.files[0], stop_before_pixels=True,
                                 specific_tags=["StudyDescription", "SeriesDescription"])
        study = study_folder_name(_dicom_text(header.get("StudyDescription", "")), job.study_uid)
        relative = Path(study) / series_folder_name(job.row, job.row.description)
    folder = output_dir / relative
    if not is_within(folder, output_dir):  # cannot happen with safe names; belt and braces
        raise RuntimeError(f"output folder {relative} escapes OUTPUT")
    return folder


def enhance_volume(enhancer, volume, settings: dict, progress: bool = False):
    """HU of ``volume`` enhanced, in its own ``[k, j, i]`` order: ``(hu, uncertainty or None)``."""
    spl, back = network_layout(volume)
    result = enhancer.enhance(
        spl[None],
        num_inference_steps=settings["steps"],
        eta=settings["eta"],
        strength=settings["strength"],
        num_samples=settings["num_samples"],
        seed=settings["seed"],
        progress=progress,
    )
    hu = back(result.hu[0].float().cpu())
    spread = None if result.uncertainty is None else back(result.uncertainty[0].float().cpu())
    return hu, spread


def _process(job: Job, folder: Path, enhancer, settings: dict, formats: set[str],
             model_version: str, software_version: str, progress: bool) -> None:
    """Read, enhance and write one series into ``folder`` (via ``folder.partial``)."""
    from bundle.data.volume_io import load_nifti, save_ct_nifti
    from bundle.dicom import read_series
    from bundle.dicom.derived import derived_hu, padding_hu, write_derived_series

    if job.row.kind == "nifti":
        volume = load_nifti(job.files[0])
    else:
        volume = read_series(job.files)
    job.row.slices = volume.hu.shape[0]
    staging = folder.with_name(folder.name + PARTIAL_SUFFIX)
    if staging.exists():
        shutil.rmtree(staging)  # an interrupted earlier attempt: ours, inside OUTPUT
    staging.mkdir(parents=True)
    try:
        hu, spread = enhance_volume(enhancer, volume, settings, progress)
        written: list[str] = []
        if job.row.kind == "dicom" and "dicom" in formats:
            paths = write_derived_series(
                hu, volume, staging, settings=settings, model_version=model_version,
                software_version=software_version,
            )
            written += [p.name for p in paths]
        if job.row.kind == "nifti" or "nifti" in formats:
            padding = [padding_hu(volume.reference)] * volume.hu.shape[0] if job.row.kind == "dicom" else None
            save_ct_nifti(volume, staging / ENHANCED_NIFTI, hu=derived_hu(hu, volume, padding), dtype="int16")
            written.append(ENHANCED_NIFTI)
        if spread is not None:
            save_ct_nifti(volume, staging / UNCERTAINTY_NIFTI, hu=spread, dtype="float32")
            written.append(UNCERTAINTY_NIFTI)
        atomic_write_json(staging / DONE_MARKER, {  # last: the series is complete
            "status": "enhanced",
            "settings": settings,
            "model": model_version,
            "software": software_version,
            "series_uid_hash": job.row.series_uid_hash,
            "slices": int(volume.hu.shape[0]),
            "files": written,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        os.replace(staging, folder)  # atomic: the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class _Blocked(Exception):
    """A series failed for a reason already phrased for the summary (no paths in it)."""


def _run_job(job: Job, input_path: Path, output_dir: Path, enhancer, settings: dict, formats: set[str],
             model_version: str, software_version: str, progress: bool) -> None:
    """Enhance one pending series, or skip it if a previous run finished it; sets its row."""
    row = job.row
    if job.blocked:
        raise _Blocked(job.blocked)
    folder = _output_folder(job, output_dir)
    row.output = str(folder.relative_to(output_dir))
    if input_path.is_dir() and (is_within(folder, input_path) or is_within(input_path, folder)):
        raise _Blocked(f"output folder {row.output} would overlap INPUT; choose another OUTPUT")
    marker = read_done_marker(folder)
    if marker is not None:
        row.status = "skipped"
        row.reason = f"already enhanced ({marker.get('finished', 'earlier run')})"
        if marker.get("settings") != settings or marker.get("model") != model_version:
            row.reason += (f" with other settings or model ({marker.get('settings')}, {marker.get('model')}); "
                           "delete its folder to redo it")
        return
    if folder.exists():
        raise _Blocked(f"output folder {row.output} exists without a completion marker (not written by this "
                       "tool?); move it away to enhance this series")
    _process(job, folder, enhancer, settings, formats, model_version, software_version, progress)
    row.status, row.reason = "enhanced", ""


# --- the batch ------------------------------------------------------------------------------------
def run_batch(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    enhancer,
    *,
    steps: int = 10,
    eta: float = 0.0,
    strength: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
    output_format: str = "dicom",
    model_version: str = "unknown",
    software_version: str | None = None,
    progress: bool = True,
) -> BatchResult:
    """Enhance every selectable series under ``input_path`` into ``output_dir`` (module docstring).

    Args:
        input_path: a folder tree (DICOM and/or NIfTI) or one file.
        output_dir: the output folder (created); must not be inside ``input_path``.
        enhancer: a loaded :class:`~bundle.inference.CTEnhancer` on its device (used for all).
        steps, eta, strength, num_samples, seed: sampler settings (recorded in the outputs).
        output_format: ``"dicom"``, ``"nifti"`` or ``"both"`` for DICOM sources; NIfTI sources
            always give NIfTI.
        model_version, software_version: recorded in the derived series and the marker.
        progress: tqdm bars for the batch and the DDIM steps of each series.

    Returns:
        :class:`BatchResult`; its ``exit_code`` is 1 if any series failed.

    Raises:
        BatchError: before anything is written (OUTPUT inside INPUT, bad settings).
    """
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    import bundle

    if output_format not in FORMATS:
        raise BatchError(f"format must be one of {FORMATS}, got {output_format!r}")
    if steps < 1 or num_samples < 1 or not 0 < strength <= 1 or eta < 0:
        raise BatchError(f"need steps >= 1, num_samples >= 1, 0 < strength <= 1, eta >= 0; got "
                         f"{steps}, {num_samples}, {strength}, {eta}")
    input_path, output_dir = check_output_location(input_path, output_dir)
    try:
        from bundle.diffusion import DDIMSampler

        DDIMSampler(enhancer.schedule, num_inference_steps=steps).num_steps(strength)
    except ValueError as exc:
        raise BatchError(f"sampler settings: {exc}") from None
    software_version = software_version or f"ctv2v {bundle.__version__}"
    formats = {"dicom", "nifti"} if output_format == "both" else {output_format}
    settings = recorded_settings(enhancer, steps=steps, eta=eta, strength=strength, num_samples=num_samples, seed=seed)

    # log lines go above the progress bars instead of through them
    redirect = logging_redirect_tqdm() if progress else contextlib.nullcontext()
    with redirect, warnings.catch_warnings(), contextlib.ExitStack() as stack:
        # pydicom's warnings about invalid values quote the values (a patient name, say)
        warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")
        output_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = stack.enter_context(output_lock(output_dir))
        except OutputInUse as exc:
            raise BatchError(str(exc)) from None
        logger.debug("holding %s", lock)
        jobs, redact = plan_batch(input_path)
        rows = [job.row for job in jobs]
        summary = output_dir / SUMMARY_NAME
        _write_summary_or_stop(summary, rows)
        pending = [job for job in jobs if job.row.status == "pending"]
        logger.info("found %d series/files: %d to enhance, %d skipped, %d failed before reading", len(rows),
                    len(pending), sum(r.status == "skipped" for r in rows), sum(r.status == "failed" for r in rows))
        for job in jobs:
            if job.row.status != "pending":
                logger.info("%s: %s (%s)", job.row.label(), job.row.status, job.row.reason)

        bar = tqdm(pending, desc="series", unit="series", disable=not progress)
        for number, job in enumerate(bar, 1):
            start = time.perf_counter()
            try:
                _run_job(job, input_path, output_dir, enhancer, settings, formats, model_version,
                         software_version, progress)
            except _Blocked as exc:
                job.row.status, job.row.reason, job.row.output = "failed", str(exc), ""
            except Exception as exc:  # noqa: BLE001 - one bad series never stops the batch
                job.row.status, job.row.reason, job.row.output = "failed", redact(f"{type(exc).__name__}: {exc}"), ""
                logger.debug("%s failed:\n%s", job.row.label(), redact(traceback.format_exc()))
            job.row.seconds = f"{time.perf_counter() - start:.2f}"
            _write_summary_or_stop(summary, rows)
            logger.info("[%d/%d] %s: %s%s in %s s", number, len(pending), job.row.label(), job.row.status,
                        f" ({job.row.reason})" if job.row.reason else "", job.row.seconds)
    result = BatchResult(rows, summary)
    logger.info("done: %s; summary %s", ", ".join(f"{n} {s}" for s, n in sorted(result.counts().items())), summary)
    return result


def recorded_settings(enhancer, *, steps: int, eta: float, strength: float, num_samples: int, seed: int) -> dict:
    """The sampler settings of a run plus the enhancer's output settings: what the outputs record
    (DICOM tags, completion marker) and what a re-run compares (another fidelity weight must not
    count as done). The batch tool and the MONAI Deploy app record the same dict."""
    settings = {"steps": int(steps), "eta": float(eta), "strength": float(strength),
                "num_samples": int(num_samples), "seed": int(seed)}
    settings.update({key: getattr(enhancer, key) for key in ("fidelity_weight", "residual", "source_lowpass_sigma")
                     if hasattr(enhancer, key)})
    if getattr(enhancer, "source_lowpass_levels", ()):  # recorded only when set: markers of runs without it still match
        settings["source_lowpass_levels"] = list(enhancer.source_lowpass_levels)
        settings["source_lowpass_min_support"] = float(enhancer.source_lowpass_min_support)
    if getattr(enhancer, "source_lowpass_sigma_z", 0.0):  # likewise only when set
        settings["source_lowpass_sigma_z"] = float(enhancer.source_lowpass_sigma_z)
    return settings


def _write_summary_or_stop(summary: Path, rows) -> None:
    """summary.csv, atomically; when OUTPUT cannot take it (full disk, read-only), the batch stops
    with one line: a batch that cannot record what it did must not go on."""
    try:
        write_summary(summary, rows)
    except OSError as exc:
        raise BatchError(f"cannot write {summary}: {exc.strerror or exc}; the series finished so far are "
                         "complete (each has its completion marker), nothing else looks finished") from None


def model_version_of(path: str | os.PathLike) -> str:
    """``"<file name> sha256:<16 hex>"``: names the exact weights in the outputs' tags."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name} sha256:{digest.hexdigest()[:16]}"


def load_enhancer(model: str | os.PathLike, device: str = "auto", precision: str = "auto",
                  fidelity_weight: float | None = None,
                  source_lowpass_sigma: float | None = None,
                  source_lowpass_levels=None,
                  source_lowpass_min_support: float | None = None,
                  source_lowpass_sigma_z: float | None = None) -> tuple[Any, str]:
    """``(CTEnhancer on the device, model_version)``; ``device`` is ``auto``, ``cpu`` or ``cuda``;
    ``precision`` (``auto``: bf16 where native, else fp32; ``fp32``, ``bf16``, ``fp16`` on CUDA) is the autocast of the network calls;
    ``fidelity_weight`` (None: the model file's) scales a fidelity path's gates (0: spec decoder);
    ``source_lowpass_sigma`` (None: the model file's) is the Gaussian (px) below which the output's
    band is the source's (0: none of it); ``source_lowpass_levels`` (None: the model file's) takes
    that band per tissue level (``"tissue"``, ``()`` or ascending HU values) and
    ``source_lowpass_min_support`` (None: the model file's) sets those levels' support threshold;
    ``source_lowpass_sigma_z`` (None: the model file's) averages that band along slices too."""
    import torch

    from bundle.inference.enhancer import CTEnhancer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BatchError("--device cuda but no CUDA device is available")
    settings = {} if fidelity_weight is None else {"fidelity_weight": fidelity_weight}
    if source_lowpass_sigma is not None:
        settings["source_lowpass_sigma"] = source_lowpass_sigma
    if source_lowpass_levels is not None:
        settings["source_lowpass_levels"] = source_lowpass_levels
    if source_lowpass_min_support is not None:
        settings["source_lowpass_min_support"] = source_lowpass_min_support
    if source_lowpass_sigma_z is not None:
        settings["source_lowpass_sigma_z"] = source_lowpass_sigma_z
    settings["channels_last"] = True  # 5-12 % faster on CPUs (docs/benchmarks.md); the same numbers
    enhancer = CTEnhancer.from_file(model, precision=precision, **settings).to(device).eval()
    return enhancer, model_version_of(model)
