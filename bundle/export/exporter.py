"""``export_model``: a model file -> a folder of exported parts, ``export.json``, checked against eager.

Folder layout (``docs/export.md``)::

    encode.pt  unet.pt  decode.pt            TorchScript (traced), format "torchscript"
    encode.onnx(.data) unet.onnx(.data) ...   ONNX, format "onnx" (optional packages)
    export.json                              settings, schedule table, shapes, measured differences

Files are written to a staging folder next to the output and moved in at the end, ``export.json``
last: a folder with an ``export.json`` holds a complete export. Part files of an earlier export
that this one does not write are removed, so ``export.json`` always lists the whole folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bundle.export.manifest import build_manifest
from bundle.export.parts import (
    PARTS,
    check_slab,
    default_slab,
    example_inputs,
    input_names,
    make_parts,
)
from bundle.utils.io import atomic_write_json
from bundle.utils.model_files import ModelFileError

__all__ = ["FORMATS", "ExportError", "export_model", "load_model"]

FORMATS = ("torchscript", "onnx")
OUTPUT_NAMES = {"encode": "latent", "unet": "prediction", "decode": "channels"}


class ExportError(Exception):
    """A problem with the inputs of an export (model file, formats, slab, output folder)."""


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """``CTEnhancer.from_file`` with every problem of the file an :class:`ExportError` naming it."""
    from bundle.inference import CTEnhancer

    path = Path(path)
    try:
        return CTEnhancer.from_file(path).to(device)
    except ModelFileError as exc:  # one line naming the file and the problem
        raise ExportError(str(exc)) from None


def export_model(
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: Sequence[str] = ("torchscript",),
    slab: Sequence[int] | None = None,
    device: str = "cpu",
    fidelity_weight: float | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Export the encoder, one U-Net step and the decoder of ``model`` into ``output_dir``.

    Args:
        model: a ``model.pt`` written by training (``CTEnhancer.save``).
        output_dir: created if missing.
        formats: any of ``"torchscript"``, ``"onnx"``.
        slab: image voxels (slices, rows, columns) the parts are traced at; default the U-Net's
            training window (``latent_window`` x the VAE factor in-plane), the size for which the
            runner equals ``CTEnhancer.enhance``.
        device: ``"cpu"`` or ``"cuda"``: a TorchScript trace runs only on the device it was traced
            on (ONNX files are device-free).
        fidelity_weight: the decoder's fidelity weight, baked into the decode graph; default the
            model file's.
        log: progress messages.

    Returns:
        The manifest written as ``export.json``.
    """
    formats = list(dict.fromkeys(formats))  # unique, in order
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        raise ExportError(f"formats must be among {FORMATS}, got {list(formats)}.")
    if "onnx" in formats:
        from bundle.export.onnx_parts import missing_packages

        missing = missing_packages()
        if missing:
            raise ExportError(
                f"ONNX export needs {', '.join(missing)} (optional): pip install 'ct-v2v-diffusion[export]' "
                "or pip install onnx onnxscript onnxruntime; or export --format torchscript only."
            )
    if device not in ("cpu", "cuda"):
        raise ExportError(f"device must be cpu or cuda, got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("device cuda requested but torch sees no GPU.")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ExportError(f"output {output_dir} exists and is not a folder.")

    model = Path(model)
    enhancer = load_model(model, device)
    try:
        slab = check_slab(enhancer, default_slab(enhancer) if slab is None else slab)
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    from bundle.inference.batch.run import model_version_of

    model_version = model_version_of(model)
    parts = make_parts(enhancer, fidelity_weight)
    names = input_names(parts)
    max_timestep = enhancer.schedule.num_train_timesteps - 1
    trace_inputs = example_inputs(enhancer, parts, slab, seed=0, device=device, timestep=max_timestep)
    # other values and another timestep: a constant baked into a graph would show here
    check_inputs = example_inputs(enhancer, parts, slab, seed=1, device=device, timestep=max_timestep // 2)
    with torch.no_grad():
        eager = {name: parts[name](*check_inputs[name]) for name in PARTS}
    manifest = build_manifest(enhancer, parts, trace_inputs, eager, names, slab, model, model_version, device)

    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.export-", dir=output_dir.parent))
    files: dict[str, dict[str, Any]] = {name: {} for name in PARTS}
    verification: dict[str, dict[str, dict[str, float] | None]] = {}
    try:
        if "torchscript" in formats:
            from bundle.export.torchscript import load_traced, save_traced, trace_part

            verification["torchscript"] = {}
            for name in PARTS:
                log(f"tracing {name} at {tuple(trace_inputs[name][0].shape)}")
                traced = trace_part(parts[name], trace_inputs[name])
                metadata = {"ctv2v_export_part": name, "model_version": model_version,
                            "device": device, **manifest["parts"][name]}
                save_traced(traced, staging / f"{name}.pt", metadata)
                loaded = load_traced(staging / f"{name}.pt", device)
                with torch.no_grad():
                    verification["torchscript"][name] = _compare(loaded(*check_inputs[name]), eager[name])
                files[name]["torchscript"] = f"{name}.pt"
        if "onnx" in formats:
            from bundle.export.onnx_parts import (
                export_onnx,
                onnxruntime_available,
                run_onnx,
            )

            checked = onnxruntime_available()
            verification["onnx"] = {}
            for name in PARTS:
                log(f"exporting {name} to ONNX")
                path = staging / f"{name}.onnx"
                try:
                    export_onnx(parts[name], trace_inputs[name], path, names[name], OUTPUT_NAMES[name])
                except Exception as exc:  # the exporter raises many types; the message is what matters
                    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
                    raise ExportError(
                        f"ONNX export of {name} failed ({type(exc).__name__}: {first_line}); "
                        "--format torchscript does not need it."
                    ) from exc
                verification["onnx"][name] = None  # not checked without onnxruntime
                if checked:
                    out = run_onnx(path, dict(zip(names[name], check_inputs[name])))
                    verification["onnx"][name] = _compare(out, eager[name])
                files[name]["onnx"] = f"{name}.onnx"
                if (staging / f"{name}.onnx.data").exists():
                    files[name]["onnx_data"] = f"{name}.onnx.data"
        for name in PARTS:
            manifest["parts"][name]["files"] = files[name]
        manifest["verification"] = {
            "what": "per part: max |exported - eager| and max |eager| on random inputs other than the trace's "
                    "(decode: HU-window channel units; encode, unet: scaled latent units); null: not checked "
                    "(no onnxruntime)",
            **verification,
        }
        _move_into(staging, output_dir)
        atomic_write_json(output_dir / "export.json", manifest)
        # the atomic writer's temporary file is private (0600); the export is meant to be shipped
        os.chmod(output_dir / "export.json", 0o644)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _compare(exported: torch.Tensor, eager: torch.Tensor) -> dict[str, float]:
    exported, eager = exported.detach().float().cpu(), eager.detach().float().cpu()
    return {"max_abs_difference": float((exported - eager).abs().max()), "max_abs_output": float(eager.abs().max())}


def _move_into(staging: Path, output_dir: Path) -> None:
    """Replace the part files of ``output_dir`` with the staged ones (stale ones removed first)."""
    stale = [output_dir / "export.json"]
    for name in PARTS:
        stale += [output_dir / f"{name}.pt", output_dir / f"{name}.onnx", output_dir / f"{name}.onnx.data"]
    for path in stale:
        path.unlink(missing_ok=True)
    for path in sorted(staging.iterdir()):
        os.replace(path, output_dir / path.name)
