"""Inference rows of ``ctv2v benchmark``: whole-volume ``CTEnhancer.enhance`` per volume length,
with its stages, memory and FLOP/s, and variants set against the plain fp32 output of one volume.

One row per volume (and precision): ``seconds`` is one whole ``enhance`` call; ``extra`` holds the
stages (VAE encode s, U-Net s per DDIM step and the number of U-Net calls, VAE decode s) and the
volume in slab-equivalents (voxels / the U-Net window in image voxels, ``latent_window`` x VAE
factor^2 in-plane: 8 x 128 x 128 at full size) with seconds per slab. ``peak_mib`` is the row's own
peak (``PeakMemory``): along the lengths it shows whether memory stays flat as volumes grow (the
tiling bounds the networks' activations; what grows is the volume, its latent and the blend
accumulators).

The enhancer is the model file when given (e.g. the demo's ``models/model.pt``), else a randomly
initialised one built from the size's networks, schedule, HU windows and tiling geometry
(``SizeSpec.enhancer_settings``): timings do not depend on the weights.

Variants (:func:`parse_variant`), each one row against the plain fp32 row of the SAME volume
(``hu_max`` / ``hu_mean`` = max / mean |HU - that output|): ``bf16``, ``fp16`` (network
precision), ``channels_last_3d`` (both networks' weights in that memory format), ``compile``
(``torch.compile`` of the U-Net; the first call, which compiles, is reported apart),
``no_diffusion`` (the model's output formula with the source's own latent, as the evaluation's
``no_diffusion`` row computes it: ``CTEnhancer.ceiling(source, source)``), and any
``KEY=VALUE`` of a ``CTEnhancer`` setting: ``steps=10`` (``num_inference_steps``),
``strength=0.5``, ``window_batch_size=16``, ``image_overlap=2,16,16``, ``image_tile=16,128,128``,
``latent_overlap=2,4,4``, ``eta=1``, ``fidelity_weight=0``, ``residual=true``, ...
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bundle.benchmark.measure import PeakMemory, Row, count_flops, median, time_call
from bundle.utils.precision import native_bf16

__all__ = [
    "VARIANT_WORDS",
    "BenchmarkArgumentError",
    "Variant",
    "build_enhancer",
    "inference_rows",
    "parse_shape",
    "parse_variant",
    "source_volume",
]

SECTION = "inference"
# variants that are one word; everything else is KEY=VALUE of a CTEnhancer setting
VARIANT_WORDS = ("bf16", "fp16", "channels_last_3d", "compile", "no_diffusion")
ALIASES = {"steps": "num_inference_steps"}
# CTEnhancer constructor arguments a variant cannot set (networks, file contents, a buffer)
_NOT_SETTINGS = ("self", "autoencoder", "unet", "schedule", "hu_windows", "scale_factor")
# phantoms above this many voxels are made smaller and interpolated (make_phantom takes about 3 s
# per 2M voxels on one core; a 300 x 512 x 512 volume would take minutes)
_DIRECT_PHANTOM_VOXELS = 128 * 128 * 128


class BenchmarkArgumentError(ValueError):
    """A benchmark argument that cannot be used; ``str()`` is one line naming the problem."""


# --- arguments ------------------------------------------------------------------------------------
def parse_shape(text: str | int | Sequence[int], in_plane: int) -> tuple[int, int, int]:
    """A volume: ``32`` (slices; in-plane ``in_plane`` x ``in_plane``) or ``32x256x256``."""
    if isinstance(text, (tuple, list)):
        parts = [str(v) for v in text]
    else:
        parts = str(text).lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = [values[0], int(in_plane), int(in_plane)]
    if len(values) != 3 or min(values) < 1:
        raise BenchmarkArgumentError(f"volume length {text!r}: expected slices (e.g. 32) or SxHxW (e.g. 32x256x256)")
    return tuple(values)


def _format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


@dataclass(frozen=True)
class Variant:
    """One inference variant: ``label`` as typed; ``kind`` one of ``precision``, ``channels_last_3d``,
    ``compile``, ``no_diffusion``, ``setting`` (then ``key``/``value`` is the CTEnhancer attribute)."""

    label: str
    kind: str
    key: str = ""
    value: object = None


def _setting_defaults() -> dict:
    from bundle.inference.enhancer import CTEnhancer

    return {name: p.default for name, p in inspect.signature(CTEnhancer.__init__).parameters.items()
            if name not in _NOT_SETTINGS}


def _convert(text: str, default):
    """``text`` as the type of ``default``; a ``ValueError`` says what was expected."""
    if isinstance(default, tuple):
        expected = f"{len(default)} comma-separated integers"
        try:
            value = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(expected) from None
        if len(value) != len(default):
            raise ValueError(expected)
        return value
    if isinstance(default, bool):
        words = {"1": True, "true": True, "yes": True, "on": True,
                 "0": False, "false": False, "no": False, "off": False}
        if text.lower() not in words:
            raise ValueError("true or false")
        return words[text.lower()]
    for kind, expected in ((int, "an integer"), (float, "a number")):
        if isinstance(default, kind):
            try:
                return kind(text)
            except ValueError:
                raise ValueError(expected) from None
    return text


def parse_variant(text: str) -> Variant:
    """``bf16``, ``fp16``, ``channels_last_3d``, ``compile``, ``no_diffusion`` or ``KEY=VALUE`` of a
    CTEnhancer setting (tuples comma-separated: ``image_overlap=2,16,16``); raises
    :class:`BenchmarkArgumentError` naming the problem."""
    text = str(text).strip()
    if "+" in text:  # several settings in one row, e.g. image_overlap=2,16,16+steps=10
        parts = tuple(parse_variant(part) for part in text.split("+"))
        if any(part.kind in ("compile", "no_diffusion", "combined") for part in parts):
            raise BenchmarkArgumentError(f"variant {text!r}: only settings, precisions and channels_last_3d combine with '+'")
        return Variant(text, "combined", "", parts)
    if text in ("bf16", "fp16"):
        return Variant(text, "precision", "precision", text)
    if text in VARIANT_WORDS:
        return Variant(text, text)
    defaults = _setting_defaults()
    known = f"one of {', '.join(VARIANT_WORDS)} or KEY=VALUE with KEY in {', '.join(['steps', *defaults])}"
    if "=" not in text:
        raise BenchmarkArgumentError(f"unknown variant {text!r}: {known}")
    key, raw = (part.strip() for part in text.split("=", 1))
    key = ALIASES.get(key, key)
    if key not in defaults:
        raise BenchmarkArgumentError(f"unknown variant key {key!r} in {text!r}: {known}")
    try:
        value = _convert(raw, defaults[key])
    except ValueError as error:
        raise BenchmarkArgumentError(f"variant {text!r}: {key} takes {error}, not {raw!r}") from None
    from bundle.inference.enhancer import check_settings

    try:
        check_settings({key: value})
    except ValueError as error:  # SettingError: one line
        raise BenchmarkArgumentError(f"variant {text!r}: {error}") from None
    if key == "precision":
        return Variant(text, "precision", "precision", value)
    return Variant(text, "setting", key, value)


# --- the enhancer and the volumes -----------------------------------------------------------------
def build_enhancer(spec, model_path: str | Path | None, steps: int, device: torch.device | str):
    """``(CTEnhancer, weights)``: the model file's, or a randomly initialised one of ``spec``'s size
    (seed 0); ``weights`` names which (the file's name or ``random``)."""
    from bundle.inference.enhancer import CTEnhancer

    device = torch.device(device)
    if model_path:
        enhancer = CTEnhancer.from_file(model_path, num_inference_steps=steps)
        weights = Path(model_path).name
    else:
        torch.manual_seed(0)
        with torch.device(device):  # initialise where it runs (a full-size model on a GPU: seconds)
            vae, unet = spec.build_networks(device)
        enhancer = CTEnhancer(vae, unet, spec.build_schedule(), hu_windows=spec.hu_windows,
                              num_inference_steps=steps, **spec.enhancer_settings())
        weights = "random"
    return enhancer.to(device).eval(), weights


def source_volume(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """A ``(1, 1, S, H, W)`` HU phantom (seed 0) with low-dose-like noise, N(0, 20 HU) per voxel.
    Large volumes are a smaller phantom interpolated up (the timings do not depend on the anatomy)."""
    import torch.nn.functional as F

    from bundle.data.phantom import make_phantom

    shape = tuple(int(s) for s in shape)
    small = shape if math.prod(shape) <= _DIRECT_PHANTOM_VOXELS else (min(shape[0], 64), min(shape[1], 128),
                                                                       min(shape[2], 128))
    hu = torch.from_numpy(make_phantom(seed, shape=small).hu)[None, None].float()
    if small != shape:
        hu = F.interpolate(hu, size=shape, mode="trilinear", align_corners=False)
    generator = torch.Generator().manual_seed(seed)
    return hu + 20.0 * torch.randn(hu.shape, generator=generator)


def _load_volume(path: str | Path) -> torch.Tensor:
    from bundle.data.volume_io import load_ct

    return torch.from_numpy(load_ct(path).hu).float()[None, None]


# --- stage timing and FLOP counting ---------------------------------------------------------------
def _signature(args, kwargs) -> tuple:
    """What decides a call's FLOPs besides its batch: the shapes (without the batch) and dtypes of
    its tensors and its other arguments."""

    def one(value):
        if torch.is_tensor(value):
            return ("tensor", tuple(value.shape[1:]), value.dtype)
        return ("value", value)

    return tuple(one(a) for a in args), tuple((k, one(v)) for k, v in sorted(kwargs.items()))


class _Stages:
    """Seconds, calls and windows of each network stage (encode, U-Net, decode) inside one call;
    on CUDA with events, so the stages are timed without stalling the queue."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter = Counter()
        self.windows: Counter = Counter()
        self.signatures: Counter = Counter()  # (stage, signature) -> windows
        self._events: list = []

    def wrap(self, stage: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn(*args, **kwargs)
                end.record()
                self._events.append((stage, start, end))
            else:
                began = time.perf_counter()
                out = fn(*args, **kwargs)
                self.seconds[stage] += time.perf_counter() - began
            n = int(args[0].shape[0])
            self.calls[stage] += 1
            self.windows[stage] += n
            self.signatures[(stage, _signature(args, kwargs))] += n
            return out

        return timed

    def finish(self) -> None:
        if self._events:
            torch.cuda.synchronize()
            for stage, start, end in self._events:
                self.seconds[stage] += start.elapsed_time(end) / 1000
            self._events.clear()


_MISSING = object()


@contextlib.contextmanager
def _patched(obj, name: str, value):
    """``obj.name`` replaced by ``value`` in the instance's dict, restored after."""
    before = obj.__dict__.get(name, _MISSING)
    obj.__dict__[name] = value
    try:
        yield
    finally:
        if before is _MISSING:
            del obj.__dict__[name]
        else:
            obj.__dict__[name] = before


@contextlib.contextmanager
def _timed_stages(enhancer, stages: _Stages):
    vae, unet = enhancer.autoencoder, enhancer.unet
    with _patched(vae, "encode", stages.wrap("encode", vae.encode)), \
            _patched(vae, "decode", stages.wrap("decode", vae.decode)), \
            _patched(unet, "forward", stages.wrap("unet", unet.forward)):
        yield


class _FlopCounter:
    """FLOPs of one enhance, counted cheaply: counting the whole call would run it again under
    ``FlopCounterMode``, so instead each distinct tile / window call (shape and arguments) is
    counted ONCE, with batch 1, on ``meta`` copies of the networks (no compute, no memory), and
    multiplied by the number of windows of that shape the timed call ran (convolution and matmul
    FLOPs are linear in the batch). Blending, HU mapping and the DDIM arithmetic are not counted
    (``FlopCounterMode`` counts matmuls, convolutions and attention only)."""

    def __init__(self, enhancer) -> None:
        with torch.device("meta"):
            self.vae = type(enhancer.autoencoder)(**enhancer.autoencoder.config).eval()
            self.unet = type(enhancer.unet)(**enhancer.unet.config).eval()
        self.functions = {"encode": self.vae.encode, "decode": self.vae.decode, "unet": self.unet}
        self.cache: dict = {}

    def per_window(self, stage: str, signature: tuple) -> float:
        key = (stage, signature)
        if key not in self.cache:
            def build(item):
                kind, value, *dtype = item
                return torch.empty((1, *value), dtype=dtype[0], device="meta") if kind == "tensor" else value

            args = [build(a) for a in signature[0]]
            kwargs = {k: build(v) for k, v in signature[1]}
            with torch.no_grad():
                self.cache[key] = count_flops(lambda: self.functions[stage](*args, **kwargs))
        return self.cache[key]

    def total(self, stages: _Stages) -> float:
        return float(sum(self.per_window(stage, sig) * n for (stage, sig), n in stages.signatures.items()))


# --- variants ---------------------------------------------------------------------------------------
def _skip_reason(precision: str, device: torch.device) -> str | None:
    if precision == "fp16" and device.type != "cuda":
        return "fp16 needs a CUDA device"
    if precision == "bf16" and not native_bf16(device):
        return (f"no native bf16 on this {device.type} (emulated bf16 is far slower than fp32; "
                "bundle/utils/precision.py)")
    return None


@contextlib.contextmanager
def _applied(enhancer, variant: Variant | None):
    """The enhancer with ``variant`` applied, restored afterwards."""
    if variant is None or variant.kind == "no_diffusion":
        yield
    elif variant.kind == "combined":
        with contextlib.ExitStack() as stack:
            for part in variant.value:
                stack.enter_context(_applied(enhancer, part))
            yield
    elif variant.kind in ("setting", "precision"):
        before = getattr(enhancer, variant.key)
        setattr(enhancer, variant.key, variant.value)
        try:
            yield
        finally:
            setattr(enhancer, variant.key, before)
    elif variant.kind == "channels_last_3d":
        try:
            for module in (enhancer.autoencoder, enhancer.unet):
                module.to(memory_format=torch.channels_last_3d)
            yield
        finally:
            for module in (enhancer.autoencoder, enhancer.unet):
                module.to(memory_format=torch.contiguous_format)
    elif variant.kind == "compile":
        original = enhancer.unet
        enhancer.unet = torch.compile(original)
        try:
            yield
        finally:
            enhancer.unet = original
    else:  # pragma: no cover - parse_variant makes only the kinds above
        raise ValueError(f"unknown variant kind {variant.kind!r}")


def _precision_of(variant: Variant) -> str:
    """The network precision a variant runs in (fp32 unless it sets one)."""
    parts = variant.value if variant.kind == "combined" else (variant,)
    return next((part.value for part in parts if part.kind == "precision"), "fp32")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    line = line if len(line) <= 200 else line[:197] + "..."
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


# --- rows -----------------------------------------------------------------------------------------
@dataclass
class _Volume:
    name: str
    source: torch.Tensor     # (1, 1, S, H, W) HU on the CPU


def inference_rows(
    spec,
    device: torch.device | str,
    model_path: str | Path | None = None,
    lengths: Iterable = (32, 64, 128),
    in_plane: int = 128,
    steps: int = 10,
    precisions: Sequence[str] = ("fp32",),
    variants: Sequence[str | Variant] = (),
    volume: str | Path | None = None,
    warmup: bool = True,
    settings: Sequence[str | Variant] = (),
    log: Callable[[str], None] | None = None,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """The inference rows of one size (module docstring).

    Args:
        spec: the size (:func:`bundle.benchmark.sizes.load_size`); its networks when no model file.
        device: where everything runs.
        model_path: a ``model.pt`` to load instead of random weights of ``spec``'s size.
        lengths: volumes, each ``slices`` (in-plane ``in_plane``) or ``SxHxW``.
        steps: DDIM steps (``num_inference_steps``).
        precisions: the plain rows' network precisions (each plain row of a non-fp32 precision is
            also set against the fp32 output of its volume when fp32 ran).
        variants: :func:`parse_variant` strings, run on the reference volume: ``volume`` (a NIfTI
            file or DICOM folder in HU) when given, else the middle of ``lengths``.
        warmup: one untimed 1-step enhance of one slab per precision before its first row (the
            first calls pay for kernel selection and allocation); off for a full-size check on a CPU.
        settings: ``KEY=VALUE`` CTEnhancer settings of every row, plain ones included (e.g.
            ``window_batch_size=32`` for a large volume on a GPU).
        log: progress lines (default stderr).
        on_row: called with each row as soon as it is measured (the runner saves its JSON then).
    """
    from bundle.diffusion import DDIMSampler

    device = torch.device(device)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    parsed = [v if isinstance(v, Variant) else parse_variant(v) for v in variants]
    shapes = [parse_shape(x, in_plane) for x in lengths]
    fixed = [s if isinstance(s, Variant) else parse_variant(s) for s in settings]
    wrong = [s.label for s in fixed if s.kind != "setting"]
    if wrong:
        raise BenchmarkArgumentError(f"setting(s) {', '.join(wrong)}: expected KEY=VALUE of a CTEnhancer setting "
                                     "(precisions: --precision; the other variants: --variant)")
    order = sorted(dict.fromkeys(precisions), key=lambda p: p != "fp32")  # fp32 first: the reference

    enhancer, weights = build_enhancer(spec, model_path, steps, device)
    for setting in fixed:
        setattr(enhancer, setting.key, setting.value)
    counter = _FlopCounter(enhancer)
    slab_voxels = math.prod(enhancer.latent_window) * enhancer.vae_factor ** 2
    plain_precision = enhancer.precision
    warmed: set[str] = set()

    def measure(vol: _Volume, precision: str, variant: Variant | None, reference: torch.Tensor | None):
        """One row; returns ``(row, output on the CPU or None)``."""
        label = "" if variant is None else variant.label
        row = Row(section=SECTION, name=vol.name, size=spec.name, precision=precision, variant=label)
        if weights != "random":
            row.extra["weights"] = weights
        reason = _skip_reason(precision, device)
        if reason:
            row.extra["skipped"] = reason
            log(f"inference {spec.name} {vol.name} {precision} {label}: skipped: {reason}")
            return row, None
        try:
            with _applied(enhancer, variant):
                enhancer.precision = precision if variant is None or variant.kind != "precision" else variant.value
                if warmup and precision not in warmed:
                    f = enhancer.vae_factor
                    s, h, w = enhancer.latent_window
                    tiny = vol.source[..., :s, : h * f, : w * f].to(device)  # one slab (padded if smaller)
                    enhancer.enhance(tiny, num_inference_steps=1)
                    warmed.add(precision)
                source = vol.source.to(device)
                if variant is not None and variant.kind == "no_diffusion":
                    def call():
                        return enhancer.ceiling(source, source)
                else:
                    def call():
                        return enhancer.enhance(source).hu
                if variant is not None and variant.kind == "compile":  # the first call compiles
                    began = time.perf_counter()
                    call()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    row.extra["first call s"] = time.perf_counter() - began
                out = _timed_row(row, enhancer, call, device, counter, slab_voxels, vol, variant, DDIMSampler)
        except Exception as error:  # noqa: BLE001 - a failing row is a note; the others still run
            row.extra["failed"] = _first_line(error)
            log(f"inference {spec.name} {vol.name} {precision} {label}: failed: {row.extra['failed']}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return row, None
        finally:
            enhancer.precision = plain_precision
        if reference is not None:
            difference = (out - reference).abs()
            row.hu_max, row.hu_mean = float(difference.max()), float(difference.mean())
        log(f"inference {spec.name} {vol.name} {precision} {label or 'plain'}: {row.seconds:.3f} s, "
            f"peak {row.peak_mib:.0f} MiB")
        return row, out

    volumes = [(shape, None) for shape in shapes]
    if volume is not None:
        volumes.append((None, Path(volume)))
    reference_index = len(volumes) - 1 if volume is not None else len(shapes) // 2
    rows: list[Row] = []

    def add(row: Row) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for index, (shape, path) in enumerate(volumes):
        if path is None:
            vol = _Volume(f"enhance {_format_shape(shape)}", source_volume(shape))
        else:
            source = _load_volume(path)
            vol = _Volume(f"enhance {path.name} {_format_shape(source.shape[2:])}", source)
        is_reference = index == reference_index and bool(parsed)
        run = order if not is_reference or "fp32" in order else ["fp32", *order]
        fp32_out = None
        for precision in run:
            row, out = measure(vol, precision, None, fp32_out if precision != "fp32" else None)
            add(row)
            if precision == "fp32":
                fp32_out = out
        if is_reference:
            for variant in parsed:
                add(measure(vol, _precision_of(variant), variant, fp32_out)[0])
        del vol, fp32_out
    return rows


def _timed_row(row: Row, enhancer, call, device, counter: _FlopCounter, slab_voxels: int, vol: _Volume,
               variant: Variant | None, sampler_cls) -> torch.Tensor:
    """Run ``call`` once under the stage timers and ``PeakMemory``; fill ``row``; return the output
    on the CPU."""
    stages = _Stages(device)
    result = {}

    def run():
        result["out"] = call()

    with _timed_stages(enhancer, stages), PeakMemory(device) as peak:
        seconds = median(time_call(run, device, warmup=0, repeats=1))
    stages.finish()
    out = result.pop("out").float().cpu()

    diffusion = variant is None or variant.kind != "no_diffusion"
    steps = 0
    if diffusion:
        sampler = sampler_cls(enhancer.schedule, num_inference_steps=enhancer.num_inference_steps, eta=enhancer.eta)
        steps = sampler.num_steps(enhancer.strength) * enhancer.num_samples
    slabs = vol.source.numel() / slab_voxels
    row.seconds = seconds
    row.peak_mib, row.peak_kind = peak.mib, peak.kind
    try:
        row.flops = counter.total(stages)
        row.flops_per_s = row.flops / seconds if seconds > 0 else None
    except Exception as error:  # noqa: BLE001 - a network the meta device cannot run: no FLOPs
        row.extra["flops"] = f"not counted: {_first_line(error)}"
    row.extra.update({
        "encode s": stages.seconds.get("encode", 0.0),
        "U-Net s/step": stages.seconds.get("unet", 0.0) / steps if steps else None,
        "U-Net calls": stages.calls.get("unet", 0),
        "steps": steps,
        "decode s": stages.seconds.get("decode", 0.0),
        "slabs": slabs,
        "s/slab": seconds / slabs,
    })
    return out
