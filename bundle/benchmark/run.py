"""One ``ctv2v benchmark`` run: the matmul peak, then per size the requested sections, one table.

Order: the matmul peak of every precision first (section ``matmul``, the ceiling FLOP/s rows are
set against: ``peak_ratio``); then, per size, the parameter counts (on the ``meta`` device: no
memory, no time) and the sections ``training`` (:mod:`bundle.benchmark.training`), ``inference``
(:mod:`bundle.benchmark.inference`) and ``peer`` (:mod:`bundle.benchmark.peers`). A section whose
module is not there says so in the notes and gives no rows.

The result (returned, printed, and written to ``json_path`` atomically after every section, so a
run killed by a timeout keeps what it measured; ``complete`` says whether it ended): ``machine``,
``arguments``, ``parameters``, ``rows`` (``Row.as_dict``), ``ratios`` (what was measured side by
side: each variant against its plain row, each precision against fp32, phase 1 with cached
latents against encoding every step, peak memory along the volume lengths) and ``notes``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import torch

from bundle.benchmark.inference import (
    BenchmarkArgumentError,
    inference_rows,
    parse_shape,
    parse_variant,
)
from bundle.benchmark.measure import (
    Row,
    format_table,
    machine_description,
    matmul_peak,
    threads,
)
from bundle.benchmark.sizes import SizeSpec, load_size
from bundle.utils.io import atomic_write_json

__all__ = [
    "PRECISIONS",
    "SECTIONS",
    "compute_ratios",
        "parameter_counts",
    "resolve_device",
    "run_benchmark",
]

SECTIONS = ("training", "inference", "peer")
PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (a GPU when present), ``cpu`` or ``cuda[:N]``; a missing GPU is an argument error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise BenchmarkArgumentError(f"--device {device!r}: expected auto, cpu or cuda") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkArgumentError(f"--device {device}: no CUDA device here (use --device cpu or auto)")
    if resolved.type not in ("cpu", "cuda"):
        raise BenchmarkArgumentError(f"--device {device!r}: expected auto, cpu or cuda")
    return resolved


def parameter_counts(spec: SizeSpec) -> dict[str, int]:
    """Parameters of each component of ``spec``'s networks, built on the ``meta`` device."""
    with torch.device("meta"):
        vae, unet = spec.build_networks("meta")

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    counts = {"VAE encoder": count(vae.encoder), "VAE decoder": count(vae.decoder)}
    fidelity = getattr(vae, "fidelity", None)
    if fidelity is not None:
        counts["fidelity path"] = count(fidelity)
    counts["U-Net"] = count(unet)
    counts["total"] = count(vae) + count(unet)
    return counts


def _lazy_section(section: str):
    """The module of a section written beside this one (``training_rows``, ``peer_rows``), or
    ``None`` when it is not there."""
    try:
        if section == "training":
            from bundle.benchmark import training

            return training
        from bundle.benchmark import peers

        return peers
    except ModuleNotFoundError as error:
        if error.name in ("bundle.benchmark.training", "bundle.benchmark.peers"):
            return None
        raise


def compute_ratios(rows: Sequence[Row]) -> list[dict]:
    """What rows measured side by side say: ``{"what", "value", "detail"}`` entries."""
    ratios: list[dict] = []
    timed = [r for r in rows if r.section != "matmul" and r.seconds]
    plain = {(r.section, r.size, r.name, r.precision): r for r in timed if not r.variant}
    for r in timed:
        if r.variant:  # inference variants are against plain fp32; others against their own precision
            ref = plain.get((r.section, r.size, r.name, "fp32" if r.section == "inference" else r.precision))
            if ref is not None:
                ratios.append({"what": f"{r.section} {r.size} {r.name}: {r.variant} / plain seconds",
                               "value": r.seconds / ref.seconds,
                               "detail": f"{r.seconds:.3g} s vs {ref.seconds:.3g} s"})
        elif r.precision != "fp32":
            ref = plain.get((r.section, r.size, r.name, "fp32"))
            if ref is not None:
                ratios.append({"what": f"{r.section} {r.size} {r.name}: {r.precision} / fp32 seconds",
                               "value": r.seconds / ref.seconds,
                               "detail": f"{r.seconds:.3g} s vs {ref.seconds:.3g} s"})
    # phase 1 with cached latents against encoding every step (training rows, by their names)
    groups: dict = {}
    for r in timed:
        if r.section == "training" and not r.variant and "phase 1" in r.name.lower():
            groups.setdefault((r.size, r.precision), []).append(r)
    for (size, precision), group in groups.items():
        cached = [r for r in group if "cached" in r.name.lower() and "not cached" not in r.name.lower()]
        encoding = [r for r in group if r not in cached]
        if cached and encoding:
            c, e = cached[0], encoding[0]
            ratios.append({"what": f"training {size} {precision}: phase 1 encode every step / cached latents seconds",
                           "value": e.seconds / c.seconds,
                           "detail": f"{e.name} {e.seconds:.3g} s, {c.name} {c.seconds:.3g} s"})
    # peak memory along the volumes of one size and precision
    memory: dict = {}
    for r in rows:
        if r.section == "inference" and not r.variant and r.peak_mib:
            memory.setdefault((r.size, r.precision, r.peak_kind), []).append(r)
    for (size, precision, kind), group in memory.items():
        if len(group) > 1:
            peaks = [r.peak_mib for r in group]
            ratios.append({"what": f"inference {size} {precision}: peak MiB largest / smallest volume ({kind})",
                           "value": max(peaks) / min(peaks),
                           "detail": ", ".join(f"{r.name.removeprefix('enhance ')} {r.peak_mib:.0f}" for r in group)})
    return ratios


def _print_report(result: dict, rows: Sequence[Row], out: TextIO) -> None:
    machine = result["machine"]
    line = ", ".join(f"{k} {v}" for k, v in machine.items())
    print(f"machine: {line}", file=out)
    print("parameters (counted on the meta device):", file=out)
    for size, counts in result["parameters"].items():
        print(f"  {size}: " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in counts.items()), file=out)
    print(file=out)
    print(format_table(list(rows)), file=out)
    if result["ratios"]:
        print("\nratios:", file=out)
        for ratio in result["ratios"]:
            print(f"- {ratio['what']}: {ratio['value']:.2f} ({ratio['detail']})", file=out)
    if result["notes"]:
        print("\nnotes:", file=out)
        for note in result["notes"]:
            print(f"- {note}", file=out)


def run_benchmark(
    sizes: Sequence[str | SizeSpec] = ("demo",),
    device: str | torch.device = "auto",
    sections: Sequence[str] = SECTIONS,
    precisions: Sequence[str] = ("fp32",),
    model_path: str | Path | dict | None = None,
    lengths: Sequence = (32, 64, 128),
    in_plane: int = 128,
    steps: int = 10,
    variants: Sequence[str] = (),
    training_variants: Sequence[str] = (),
    iterations: int = 3,
    volume: str | Path | None = None,
    json_path: str | Path | None = None,
    settings: Sequence[str] = (),
    bundle_root: str | Path = ".",
    num_threads: int | None = None,
    warmup: bool = True,
    out: TextIO | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure, print and (with ``json_path``) write one benchmark run; module docstring.

    ``model_path``: one model file for every size, a ``{size name: path or None}`` mapping, or
    None (random weights of each size). ``lengths``: volumes, ``slices`` at ``in_plane`` or
    ``SxHxW``. ``variants``: inference variants (:func:`bundle.benchmark.inference.parse_variant`);
    ``settings``: ``KEY=VALUE`` CTEnhancer settings of every inference row. Bad arguments raise
    :class:`BenchmarkArgumentError` (one line) before anything is measured.
    """
    out = out or sys.stdout
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    # --- arguments: every problem before any measurement ---
    device = resolve_device(device)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise BenchmarkArgumentError(f"unknown section(s) {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise BenchmarkArgumentError(f"unknown precision(s) {', '.join(bad)}: choose from {', '.join(PRECISIONS)}")
    if iterations < 1 or steps < 1 or in_plane < 1:
        raise BenchmarkArgumentError("--iterations, --steps and --in-plane must be at least 1")
    parsed_variants = [parse_variant(v) for v in variants]
    parsed_settings = [parse_variant(s) for s in settings]
    wrong = [s.label for s in parsed_settings if s.kind != "setting"]
    if wrong:
        raise BenchmarkArgumentError(f"--setting {' '.join(wrong)}: expected KEY=VALUE of a CTEnhancer setting "
                                     "(precisions go to --precision, the other variants to --variant)")
    if "training" in sections and training_variants:
        allowed = getattr(_lazy_section("training"), "VARIANTS", None)
        bad = [v for v in training_variants if allowed is not None and v not in allowed]
        if bad:
            raise BenchmarkArgumentError(f"unknown training variant(s) {', '.join(map(repr, bad))}: "
                                         f"choose from {', '.join(map(repr, allowed))}")
    shapes = [parse_shape(x, in_plane) for x in lengths]
    specs = []
    for size in sizes:
        if isinstance(size, SizeSpec):
            specs.append(size)
            continue
        try:
            specs.append(load_size(str(size), bundle_root))
        except FileNotFoundError as error:
            raise BenchmarkArgumentError(str(error)) from None
    models = model_path if isinstance(model_path, dict) else {spec.name: model_path for spec in specs}
    for name, path in models.items():
        if path is not None and not Path(path).is_file():
            raise BenchmarkArgumentError(f"--model {path}: no such model file (size {name})")
    if volume is not None and not Path(volume).exists():
        raise BenchmarkArgumentError(f"--volume {volume}: no such file or folder")

    result = {
        "machine": machine_description(device),
        "arguments": {
            "sizes": [spec.name for spec in specs], "device": str(device), "sections": list(sections),
            "precisions": list(precisions),
            "models": {name: (None if path is None else str(path)) for name, path in models.items()},
            "lengths": ["x".join(map(str, s)) for s in shapes], "in_plane": in_plane, "steps": steps,
            "variants": [v.label for v in parsed_variants], "settings": [s.label for s in parsed_settings],
            "training_variants": list(training_variants),
            "iterations": iterations, "volume": None if volume is None else str(volume), "threads": num_threads,
        },
        "parameters": {},
        "rows": [],
        "ratios": [],
        "notes": [],
        "complete": False,
    }
    rows: list[Row] = []
    peaks: dict[str, float] = {}

    def save() -> None:
        for row in rows:
            if row.peak_ratio is None and row.flops_per_s and peaks.get(row.precision):
                row.peak_ratio = row.flops_per_s / peaks[row.precision]
        result["rows"] = [row.as_dict() for row in rows]
        result["ratios"] = compute_ratios(rows)
        if json_path:
            atomic_write_json(json_path, result)

    def add(row: Row) -> None:  # inference rows are saved one by one: a run stopped by a timeout keeps them
        rows.append(row)
        save()

    with threads(num_threads):
        result["machine"]["threads"] = torch.get_num_threads()
        for precision in dict.fromkeys(precisions):
            row = Row(section="matmul", name="square matmul", size="-", precision=precision)
            if precision == "fp16" and device.type != "cuda":
                row.extra["skipped"] = "fp16 needs a CUDA device"
            else:
                n = 8192 if device.type == "cuda" else 2048  # 1024 under-measured a shared CPU
                peaks[precision] = matmul_peak(device, precision, n=n)
                row.name = f"matmul {n}x{n}"
                row.flops = 2.0 * n**3
                row.seconds = row.flops / peaks[precision]
                row.flops_per_s = peaks[precision]
                log(f"matmul {precision}: {peaks[precision] / 1e9:.1f} GFLOP/s")
            rows.append(row)
        save()
        for spec in specs:
            result["parameters"][spec.name] = parameter_counts(spec)
            for section in sections:
                if section == "inference":
                    weights = models.get(spec.name)
                    result["notes"].append(
                        f"inference {spec.name}: weights of {weights}" if weights else
                        f"inference {spec.name}: random weights (timings do not depend on them; the variants' HU "
                        "differences mean little without trained weights: --model)")
                    inference_rows(spec, device, model_path=weights, lengths=shapes, in_plane=in_plane, steps=steps,
                                   precisions=precisions, variants=parsed_variants, volume=volume, warmup=warmup,
                                   settings=parsed_settings, log=log, on_row=add)
                else:
                    module = _lazy_section(section)
                    if module is None:
                        name = "training.py" if section == "training" else "peers.py"
                        result["notes"].append(f"{section}: bundle/benchmark/{name} is not there: no {section} rows")
                        log(result["notes"][-1])
                    elif section == "training":
                        rows.extend(module.training_rows(spec, device, precisions=tuple(precisions),
                                                         iterations=iterations, warmup=1,
                                                         variants=tuple(training_variants)))
                    else:
                        rows.extend(module.peer_rows(spec, device, precisions=tuple(precisions),
                                                     iterations=iterations, warmup=1))
                save()
    result["complete"] = True
    save()
    _print_report(result, rows, out)
    return result
