"""How every benchmark row is measured: wall time, peak memory, counted FLOPs, one ``Row``.

- Time: ``time_call`` runs a callable ``warmup`` times untimed (the first call pays for kernel
  selection and allocation), then ``repeats`` times, synchronising CUDA around each call; the
  row keeps the median.
- Peak memory of one row, not of the process so far: on CUDA ``max_memory_allocated`` after
  ``reset_peak_memory_stats``; on CPU the resident-set high-water mark (``VmHWM``) after resetting
  it through ``/proc/self/clear_refs`` (Linux >= 4.0). Where that reset is refused the row reports
  the process's maximum so far and says so (``peak_kind``).
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` counts the matmuls and convolutions of one
  call (forward, and backward when the call runs one); achieved FLOP/s = counted FLOPs / median
  seconds, set against a matmul peak measured in the same run (``matmul_peak``).
"""

from __future__ import annotations

import contextlib
import math
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["Row", "PeakMemory", "time_call", "count_flops", "matmul_peak", "machine_description", "format_table"]

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass
class Row:
    """One line of the benchmark's table (``None``: not measured for this row)."""

    section: str                     # "training", "inference", "peer", "matmul", ...
    name: str                        # what ran, e.g. "phase 1 (cached latents)"
    size: str                        # "demo", "full", "tiny", or a shape
    precision: str = "fp32"
    variant: str = ""                # the setting that differs from the plain path
    seconds: float | None = None     # median wall time of one call
    calls_per_s: float | None = None  # iterations/s for training rows
    samples_per_s: float | None = None
    peak_mib: float | None = None
    peak_kind: str = ""              # "rss", "rss (process max)", "cuda allocated"
    flops: float | None = None       # counted FLOPs of one call
    flops_per_s: float | None = None
    peak_ratio: float | None = None  # flops_per_s / the matmul peak of this precision
    hu_max: float | None = None      # |HU - reference row| for inference variants
    hu_mean: float | None = None
    extra: dict = field(default_factory=dict)  # stage times, PSNR, notes

    def as_dict(self) -> dict:
        return asdict(self)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device | str, warmup: int = 1, repeats: int = 3) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    device = torch.device(device)
    for _ in range(max(0, warmup)):
        fn()
    _synchronize(device)
    seconds = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def _read_status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory(contextlib.AbstractContextManager):
    """Peak memory (MiB) of the code inside the ``with`` block: ``.mib`` and ``.kind`` after it."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.mib: float | None = None
        self.kind = ""
        self._reset = False

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            _synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
                self._reset = _read_status_kib("VmHWM") is not None
            except OSError:
                self._reset = False
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            _synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.kind = "cuda allocated"
        elif self._reset:
            self.mib = (_read_status_kib("VmHWM") or 0) / 1024
            self.kind = "rss"
        else:
            self.mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.kind = "rss (process max)"
        return None


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn`` as ``FlopCounterMode`` counts them (matmul, conv, SDPA)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device | str, precision: str = "fp32", n: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of a square matmul on ``device`` in ``precision`` (the ceiling rows are set against)."""
    device = torch.device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median(time_call(lambda: a @ b, device, warmup=2, repeats=repeats))
    return 2.0 * n**3 / seconds


def machine_description(device: torch.device | str) -> dict:
    """What the numbers were measured on: CPU model and threads, GPU name, torch, load average."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    described = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "load_average": [round(x, 2) for x in _load_average()],
    }
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


def _load_average() -> tuple[float, ...]:
    try:
        import os

        return os.getloadavg()
    except OSError:
        return ()


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 10 ** -digits):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def format_table(rows: list[Row]) -> str:
    """The rows as one Markdown table (FLOP/s in GFLOP/s)."""
    header = ("| section | what | size | precision | variant | s per call | it/s | samples/s | peak MiB "
              "| GFLOP per call | GFLOP/s | of matmul peak | HU max / mean vs reference | notes |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        hu = "-" if r.hu_max is None else f"{r.hu_max:.3f} / {r.hu_mean:.4f}"
        notes = ", ".join(f"{k} {_fmt(v)}" for k, v in r.extra.items())
        lines.append(
            f"| {r.section} | {r.name} | {r.size} | {r.precision} | {r.variant or '-'} | {_fmt(r.seconds, 3)} "
            f"| {_fmt(r.calls_per_s)} | {_fmt(r.samples_per_s)} | {_fmt(r.peak_mib, 0)} "
            f"| {_fmt(None if r.flops is None else r.flops / 1e9, 1)} "
            f"| {_fmt(None if r.flops_per_s is None else r.flops_per_s / 1e9, 1)} "
            f"| {_fmt(r.peak_ratio)} | {hu} | {notes or '-'} |"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (None: leave as is)."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
