"""The training rows of ``ctv2v benchmark``: one training iteration of each stage of the recipe.

An iteration is exactly what the engine runs per iteration: the trainer's own ``_iteration``
(``compute_loss`` under the trainer's precision, ``backward``, the optimizer step with clipping
and, for diffusion, the EMA update). The trainers are the real ones, parsed from the size's
training config (``vae_stage``, ``diffusion_trainer``) with the items a run would not have here
replaced: the networks (``vae``, ``unet``: the size's, freshly built), ``device``, a one-batch
in-memory ``train_loader``, a temporary ``ckpt_dir``, no handlers (logging and validation are not
part of an iteration), ``amp`` = the row's precision and ``grad_accum_steps`` = 1 (every iteration
steps). Optimizers, schedule, losses and weights are the config's.

Stages:

``VAE stage``                    VAEStage's iteration (VAE trainable, in train mode)
``phase 1 (encode every step)``  the diffusion trainer after ``on_start`` (VAE frozen), image crops
``phase 1 (cached latents)``     the same with a batch of precomputed posterior moments
                                 (``bundle.engines.latent_cache.encode_crops``, once, untimed)
``phase 2``                      after ``enter_phase2()`` (encoder and decoder train too)

The latent scale factor is estimated from the synthetic batch as the VAE stage would
(``estimate_scale_factor``) and handed over through ``on_start``, the engine's own path.

Variants (each row measured right after the plain row of its stage, on a fresh build):
``grad checkpointing`` (networks parsed with ``network#gradient_checkpointing: true``),
``channels_last_3d`` (networks and inputs in that memory format), ``compile`` (``torch.compile`` of
the U-Net and the VAE's encoder and decoder, in place; compilation time is in the untimed warm-up
and reported; FLOPs are the plain row's, the counter does not see compiled kernels) and
``sdpa math`` (every attention call under ``SDPBackend.MATH`` instead of torch's own choice;
the VAE has no attention: that row says so and is skipped).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence

import torch

from bundle.benchmark.measure import PeakMemory, Row, count_flops, median, time_call
from bundle.benchmark.sizes import SizeSpec
from bundle.utils import precision as _precision

__all__ = ["STAGES", "VARIANTS", "fill_timing", "overridden", "precision_skip", "synthetic_batch", "training_rows"]

STAGES = ("VAE stage", "phase 1 (encode every step)", "phase 1 (cached latents)", "phase 2")
VARIANTS = ("grad checkpointing", "channels_last_3d", "compile", "sdpa math")
_EPOCHS = 10**6  # the trainers' max_epochs: the accumulation window never reaches the run's end


# --- shared with the peer rows ------------------------------------------------------------------
def precision_skip(precision: str, device: torch.device | str, force_bf16: bool = False) -> str | None:
    """Why a row of ``precision`` is not run on ``device`` (None: it runs)."""
    device = torch.device(device)
    if precision == "bf16" and not force_bf16 and not _precision.native_bf16(device):
        return "emulated bf16 on this CPU" if device.type == "cpu" else f"no native bf16 on {device}"
    if precision == "fp16" and device.type != "cuda":
        return "fp16 needs CUDA"
    return None


def synthetic_batch(spec: SizeSpec, seed: int = 0) -> dict:
    """``source``/``target`` HU-window crops ``(batch_size, channels, *patch)`` in [-1, 1] (CPU,
    as a data loader hands them over): a smooth-ish target and the source as target plus noise."""
    generator = torch.Generator().manual_seed(seed)
    channels = len(spec.hu_windows)
    shape = (spec.batch_size, channels, *spec.patch)
    target = torch.rand(shape, generator=generator) * 2 - 1
    source = (target + 0.1 * torch.randn(shape, generator=generator)).clamp(-1, 1)
    return {"source": source, "target": target}


_MISSING = object()


@contextlib.contextmanager
def overridden(spec: SizeSpec, items: dict) -> Iterator[None]:
    """Config items of ``spec.parser`` replaced by ``items`` for the ``with`` block (ids with ``#``;
    a value may be an object, e.g. a built network, which parsing then hands over as it is), the
    original items restored afterwards, also when the block raises."""
    parser = spec.parser
    saved = {}
    try:
        for key, value in items.items():
            try:
                saved[key] = parser[key]
            except (KeyError, IndexError, TypeError):
                saved[key] = _MISSING
            parser[key] = value
        yield
    finally:
        for key, value in reversed(list(saved.items())):
            if value is _MISSING:
                parent, _, last = key.rpartition("#")
                (parser[parent] if parent else parser.get()).pop(last, None)
            else:
                parser[key] = value
        parser.ref_resolver.reset()


def fill_timing(row: Row, seconds: list[float], peak: PeakMemory, flops: float | None, samples: int) -> Row:
    """``row``'s time, rates, peak memory and FLOP/s from the timed calls (``samples`` per call)."""
    row.seconds = median(seconds)
    row.calls_per_s = 1.0 / row.seconds
    row.samples_per_s = samples / row.seconds
    row.peak_mib, row.peak_kind = peak.mib, peak.kind
    row.flops = flops
    row.flops_per_s = None if flops is None else flops / row.seconds
    return row


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def release(device: torch.device | str) -> None:
    """Free what the previous row left (between rows, so that peaks are the row's own)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# --- one stage, built as training builds it ---------------------------------------------------
def latent_cache_available() -> bool:
    return importlib.util.find_spec("bundle.engines.latent_cache") is not None


def _networks(spec: SizeSpec, device: torch.device, variant: str):
    items = {"network#gradient_checkpointing": True} if variant == "grad checkpointing" else {}
    with overridden(spec, items):
        vae, unet = spec.build_networks(device)
    if variant == "grad checkpointing":  # (what the parsed setting did: every block of both networks)
        vae.use_checkpoint = unet.use_checkpoint = True
    if variant == "channels_last_3d":
        vae.to(memory_format=torch.channels_last_3d)
        unet.to(memory_format=torch.channels_last_3d)
    return vae, unet


def _layout(batch: dict, variant: str) -> dict:
    if variant != "channels_last_3d":
        return batch
    return {k: v.contiguous(memory_format=torch.channels_last_3d) if torch.is_tensor(v) and v.dim() == 5 else v
            for k, v in batch.items()}


def _build_stage(spec: SizeSpec, device: torch.device, stage: str, precision: str, variant: str,
                 ckpt_dir: str) -> Callable[[], None]:
    """One iteration of ``stage``, as a callable: the real trainer, in the state the engine has at
    an iteration of that stage."""
    from bundle.engines.vae_stage import estimate_scale_factor

    vae, unet = _networks(spec, device, variant)
    batch = synthetic_batch(spec)
    items = {"vae": vae, "unet": unet, "device": device, "train_loader": [batch], "ckpt_dir": ckpt_dir,
             "amp": precision, "grad_accum_steps": 1}
    seed = int(spec.get("seed"))
    if stage == "VAE stage":
        with overridden(spec, {**items, "vae_epochs": _EPOCHS, "vae_stage#handlers": []}):
            trainer = spec.get("vae_stage")
        trainer.vae.requires_grad_(True).train()  # as VAEStage.run before training
    else:
        # the VAE stage's hand-over: its scale factor, estimated as it does (here from this batch)
        scale = estimate_scale_factor(vae, [batch], device, max_batches=1, seed=seed)
        handover = types.SimpleNamespace(scale_factor=scale)
        # phase1_latent_cache off: the encode-every-step row encodes every step whatever the config
        # says, the cached row hands the trainer its batch of moments itself
        with overridden(spec, {**items, "num_epochs": _EPOCHS, "vae_stage": handover,
                               "diffusion_trainer#handlers": [], "phase1_latent_cache": False}):
            trainer = spec.get("diffusion_trainer")
        trainer.state.epoch = 1
        trainer.on_start(resumed=False)  # scale factor from the VAE stage, VAE frozen (phase 1)
        if stage == "phase 2":
            trainer.state.epoch = trainer.phase1_epochs + 1
            trainer.enter_phase2()
        elif stage == "phase 1 (cached latents)":
            from bundle.engines.latent_cache import encode_crops

            # as LatentBank.build: under the training precision's autocast, kept on the CPU (the
            # bank's loader hands them over from there)
            with torch.no_grad(), _precision.autocast(device, trainer.precision):
                moments = encode_crops(trainer.vae, batch["source"].to(device), batch["target"].to(device))
            batch = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in moments.items()}
    trainer.rewrap()
    if variant == "compile":
        for module in (vae.encoder, vae.decoder, unet):
            module.compile()
    batch = _layout(batch, variant)

    def step() -> None:
        trainer.state.iteration += 1  # as ignite does before each iteration
        trainer._iteration(trainer, batch)

    if variant == "sdpa math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        default_step = step

        def step() -> None:
            with sdpa_kernel(SDPBackend.MATH):
                default_step()

    return step


def _measure(spec: SizeSpec, device: torch.device, stage: str, precision: str, variant: str,
             iterations: int, warmup: int, plain: Row | None) -> Row:
    row = Row(section="training", name=stage, size=spec.name, precision=precision, variant=variant)
    if variant == "sdpa math" and stage == "VAE stage":
        row.extra["skipped"] = "no attention in the VAE"
        return row
    if stage == "phase 1 (cached latents)" and not latent_cache_available():
        row.extra["skipped"] = "bundle.engines.latent_cache not there yet"
        return row
    if plain is not None and "skipped" in plain.extra:
        row.extra["skipped"] = "the plain row was skipped"
        return row
    tolerant = variant == "compile" or stage == "phase 1 (cached latents)"
    with tempfile.TemporaryDirectory(prefix="ctv2v-bench-") as ckpt_dir:
        try:
            step = _build_stage(spec, device, stage, precision, variant, ckpt_dir)
            # a row that may fail (compile, the cache) fails in the warm-up, before any timing
            warm = max(int(warmup), 1 if tolerant else 0)
            start = time.perf_counter()
            for i in range(warm):
                step()
                if i == 0 and variant == "compile":
                    _sync(device)
                    row.extra["compile_s"] = time.perf_counter() - start
        except Exception as error:  # a variant or the unfinished cache: a note, not a crash
            if not tolerant:
                raise
            row.extra["skipped"] = first_line(error)
            step = None
            _reset_compile(variant)
            release(device)
            return row
        with PeakMemory(device) as peak:
            seconds = time_call(step, device, warmup=0, repeats=iterations)
        if variant == "compile":
            flops = None if plain is None else plain.flops  # the counter does not see compiled kernels
            row.extra["flops"] = "the plain row's"
        else:
            flops = count_flops(step)
        fill_timing(row, seconds, peak, flops, spec.batch_size)
    del step
    _reset_compile(variant)
    release(device)
    if plain is not None:
        _compare(row, plain)
    return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_compile(variant: str) -> None:
    if variant == "compile":
        with contextlib.suppress(Exception):
            torch._dynamo.reset()


def _compare(row: Row, plain: Row) -> None:
    """A variant against the plain row of its stage: time ratio, memory saved, extra FLOPs."""
    if row.seconds is None or plain.seconds is None:
        return
    row.extra["time_vs_plain"] = row.seconds / plain.seconds
    comparable = {"rss", "cuda allocated"}
    if row.peak_kind in comparable and row.peak_kind == plain.peak_kind:
        row.extra["memory_saved_mib"] = plain.peak_mib - row.peak_mib
    if row.variant == "grad checkpointing" and row.flops is not None and plain.flops is not None:
        row.extra["recomputed_gflop"] = (row.flops - plain.flops) / 1e9


# --- the rows -------------------------------------------------------------------------------------
def training_rows(
    spec: SizeSpec,
    device: torch.device | str,
    precisions: Sequence[str] = ("fp32",),
    iterations: int = 5,
    warmup: int = 2,
    variants: Sequence[str] = (),
    force_bf16: bool = False,
    stages: Sequence[str] = STAGES,
) -> list[Row]:
    """One row per (stage, precision[, variant]), ``section="training"``: median seconds of one
    iteration over ``iterations`` after ``warmup`` untimed ones, it/s, samples/s (batch x it/s),
    the peak memory of the timed iterations and the counted FLOPs of one iteration.

    A precision the device does not compute natively (bf16 on a CPU without AVX512-BF16/AMX,
    about 200x slower) gives one row per stage with ``extra["skipped"]`` unless ``force_bf16``;
    its variants are not listed. ``peak_ratio`` is left to the runner.
    """
    device = torch.device(device)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown training variants {unknown}: allowed {list(VARIANTS)}")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown training stages {unknown}: allowed {list(STAGES)}")
    rows: list[Row] = []
    for precision in precisions:
        skip = precision_skip(precision, device, force_bf16)
        for stage in stages:
            if skip:
                rows.append(Row(section="training", name=stage, size=spec.name, precision=precision,
                                extra={"skipped": skip}))
                continue
            plain = _measure(spec, device, stage, precision, "", iterations, warmup, None)
            rows.append(plain)
            for variant in variants:
                rows.append(_measure(spec, device, stage, precision, variant, iterations, warmup, plain))
    return rows
