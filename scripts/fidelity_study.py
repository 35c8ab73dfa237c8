"""Fidelity study: does each variant's output beat its own input, and what does it cost?

Every variant is a set of config overrides of the demo recipe (configs/train.yaml +
configs/demo.yaml, the README demo's budget unless a variant says otherwise). For each one the
script trains the VAE stage (shared by variants whose VAE settings agree), then phases 1 and 2,
exports model.pt, and scores on the datalist's VALIDATION and TEST splits, soft-tissue window [-160, 240]:

- ``identity``     the low-dose input as the answer;
- ``vae_ceiling``  decode(encode(target)) through the spec decoder (no fidelity path);
- ``ceiling``      the variant's own output formula with the target's latent (fidelity path
                   and residual as configured; ``CTEnhancer.ceiling``): the best it can output;
- ``model``        the variant (DDIM, the demo's ``num_inference_steps``), plus extra rows at
                   other inference settings (fidelity weights, residual on);
- ``no_diffusion`` (fidelity path only) decode(encode(source), source): the path's output with
                   the source's own latent, no diffusion model at all: what the U-Net adds is
                   ``model`` minus this row;
- ``redcnn``       the supervised CNN baseline (bundle.evaluation.redcnn), when its model file
                   exists (``--redcnn``; ``--train-redcnn`` trains it with configs/redcnn.yaml +
                   configs/demo.yaml first).

Selection: every variant is also scored on the VALIDATION split, the table ends with the variant
that is best there, and the test split is only reported (earlier versions of this study chose the
demo default on the test volume they reported: not any more).

Metrics: per-slice PSNR and SSIM over tissue slices (air slices excluded, as in
bundle/metrics/image_quality.py) and the pooled volume PSNR; costs: parameters and seconds per
iteration of each stage (wall clock on this machine, one thread; other jobs move them).

    python scripts/fidelity_study.py                       # every variant (hours on 2 CPU cores)
    python scripts/fidelity_study.py --variants spec fidelity --vae-only   # ceilings only
    python scripts/fidelity_study.py --table               # print the table from saved results
    python scripts/fidelity_study.py --costs               # seconds per iteration, side by side

``--costs`` times one iteration of each stage (VAE pre-training, phase 1, phase 2) and one
whole-volume enhancement per variant on the same batch, interleaved over repeats (median), so
that other jobs on the machine move all variants alike; the training runs' own wall clocks are
in the JSON too but depend on what else ran at the time.

Results are cached per variant under --output (results/<variant>.json); re-running skips what
exists (--force re-runs). Run from the bundle root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

# every variant starts from the spec: configs/demo.yaml's default is a fidelity variant, and
# configs/spec_exact.yaml turns that off (no path, L1 + KL, epsilon prediction)
CONFIGS = ["configs/train.yaml", "configs/demo.yaml", "configs/spec_exact.yaml"]
SOFT = (-160.0, 240.0)
FULL = (-1024.0, 3072.0)
# config ids that change the VAE stage (variants agreeing on all of them share one VAE)
VAE_KEYS = ("network", "fidelity_channels", "vae_epochs", "vae_lr", "kl_weight", "reconstruction_loss",
            "fidelity_loss_weight", "fidelity_loss", "adversarial_weight", "seed", "train_patch_size")
DEMO_FIDELITY = [32, 64, 64]  # the demo VAE's widths [32, 64, 64, 64] at the three finest levels
PATH = {"fidelity_channels": DEMO_FIDELITY}
GRADIENT = {"reconstruction_loss#gradient": 1.0}
DEMO = {**PATH, **GRADIENT, "fidelity_loss_weight": 4.0}  # the demo default ("fidelity_gradient_fw4")

# name -> (override files of configs/studies/, config overrides, extra inference rows {row suffix:
# enhancer settings}, note)
VARIANTS: dict[str, tuple[tuple[str, ...], dict, dict, str]] = {
    "spec": ((), {}, {"residual": {"residual": True}}, "the spec: L1 + KL, 4 latent channels"),
    "ssim": (("ssim",), {}, {}, "L1 + SSIM"),
    "gradient": ((), GRADIENT, {}, "L1 + gradient"),
    "frequency": (("frequency",), {}, {}, "L1 + frequency"),
    "kl_1e-4": ((), {"kl_weight": 1e-4}, {}, "KL weight 1e-4 (spec recipe 1e-6)"),
    "adversarial": (("adversarial",), {}, {}, "L1 + KL + patch adversarial 0.05"),
    "vae_x2": ((), {"vae_epochs": 20}, {}, "VAE pre-training 20 epochs (demo: 10)"),
    "latent8": ((), {"network#latent_channels": 8}, {"residual": {"residual": True}}, "8 latent channels"),
    "latent16": ((), {"network#latent_channels": 16}, {"residual": {"residual": True}}, "16 latent channels"),
    "fidelity": (
        (), PATH,
        {"w0": {"fidelity_weight": 0.0}, "w0.5": {"fidelity_weight": 0.5}, "w1.5": {"fidelity_weight": 1.5}},
        "fidelity path, widths " + str(DEMO_FIDELITY),
    ),
    "fidelity_gradient": ((), {**PATH, **GRADIENT}, {"w0": {"fidelity_weight": 0.0}}, "fidelity path + gradient term"),
    "fidelity_gradient_ssim": (
        ("ssim",), {**PATH, **GRADIENT}, {"w0": {"fidelity_weight": 0.0}}, "fidelity path + gradient and SSIM terms",
    ),
    "fidelity_gradient_fw4": (
        (), DEMO, {"w0": {"fidelity_weight": 0.0}}, "fidelity path + gradient term, path term weighted 4 (the demo default)",
    ),
    "fidelity_gradient_fw4_hu": (
        ("hu_channel_weights",), DEMO, {"w0": {"fidelity_weight": 0.0}},
        "the demo default, window channels weighted by their width (a HU error costs alike)",
    ),
    "fidelity_gradient_fw4_sqrthu": (
        ("sqrt_hu_channel_weights",), DEMO, {"w0": {"fidelity_weight": 0.0}},
        "the demo default, window channels weighted by the square root of their width",
    ),
    "fidelity_gradient_fw4_pathhu": (
        ("path_hu_channel_weights",), DEMO, {"w0": {"fidelity_weight": 0.0}},
        "the demo default, the path's term alone weighted by window width",
    ),
    "fidelity_gradient_fw4_pathsqrthu": (
        ("path_sqrt_hu_channel_weights",), DEMO, {"w0": {"fidelity_weight": 0.0}},
        "the demo default, the path's term alone weighted by sqrt(window width)",
    ),
    "fidelity_ssim": (("ssim",), PATH, {"w0": {"fidelity_weight": 0.0}}, "fidelity path + SSIM term"),
    "fidelity_latent8": (
        (), {**PATH, "network#latent_channels": 8}, {"w0": {"fidelity_weight": 0.0}}, "fidelity path, 8 latent channels",
    ),
}


def study_files(studies) -> list[str]:
    return [f"configs/studies/{name}.yaml" for name in studies]


def parser_for(configs: list[str], overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update(overrides)
    parser.get_parsed_content("training#0")  # seed, as the run list does
    return parser


def vae_key(parser: ConfigParser) -> str:
    settings = {k: parser.get(k, None) for k in VAE_KEYS}  # the declarations, not the objects
    if settings["fidelity_channels"]:
        settings["fidelity_gate"] = "zero-conv+output-blend"  # earlier: scalar gates, no output skip
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def test_pairs(parser: ConfigParser, split: str = "test") -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(patient, source, target) HU volumes (1, S, H, W) of a split, loaded and cropped as the
    evaluation does (bundle.evaluation.evaluate.as_pair)."""
    import bundle.data.datalist
    from bundle.data.transforms import make_dataset
    from bundle.evaluation.evaluate import as_pair

    data = bundle.data.datalist.load_datalist(parser.get_parsed_content("datalist"), split)
    dataset = make_dataset(data, transform=parser.get_parsed_content("val_transforms"), cache="none")
    pairs = [as_pair(item, i) for i, item in enumerate(dataset)]
    return [(p.patient, p.source, p.target) for p in pairs]


def score(pred: torch.Tensor, target: torch.Tensor) -> dict:
    from bundle.metrics import volume_metrics

    soft = volume_metrics(pred, target, SOFT)
    full = volume_metrics(pred, target, FULL)
    return {"psnr": soft["psnr"], "ssim": soft["ssim"], "volume_psnr": soft["volume_psnr"],
            "rmse": soft["rmse"], "full_psnr": full["psnr"], "slices": soft["slices"],
            "slices_excluded": soft["slices_excluded"]}


def mean_rows(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


class Timer:
    """Wall-clock seconds per iteration of each epoch of an ignite engine."""

    def __init__(self, engine) -> None:
        self.epochs: list[tuple[float, int]] = []
        self._start = None
        engine.add_event_handler(Events.EPOCH_STARTED, self._begin)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._end)

    def _begin(self, engine) -> None:
        self._start = (time.perf_counter(), engine.state.iteration)

    def _end(self, engine) -> None:
        t0, i0 = self._start
        self.epochs.append((time.perf_counter() - t0, engine.state.iteration - i0))

    def per_iteration(self, epochs: slice = slice(None)) -> float | None:
        chosen = self.epochs[epochs]
        iterations = sum(n for _, n in chosen)
        return sum(s for s, _ in chosen) / iterations if iterations else None


def train_vae(configs, overrides, out: Path) -> tuple[str, dict]:
    parser = parser_for(configs, overrides)
    key = vae_key(parser)
    vae_dir = out / "vae" / key
    info_path = vae_dir / "info.json"
    final = vae_dir / "checkpoints" / "vae_final.pt"
    if final.is_file() and info_path.is_file():
        return str(final), json.loads(info_path.read_text())
    parser = parser_for(configs, {**overrides, "output_dir": str(vae_dir)})
    stage = parser.get_parsed_content("vae_stage")
    timer = Timer(stage)
    start = time.perf_counter()
    stage.run()
    info = {"seconds": time.perf_counter() - start, "s_per_iteration": timer.per_iteration(),
            "iterations": stage.state.iteration, "scale_factor": stage.scale_factor,
            "final_terms": {k: v for k, v in (stage.state.output or {}).items() if k != "lr"}}
    info_path.write_text(json.dumps(info, indent=2))
    return str(stage.final_path), info


# the path's term at train.yaml's weight 1 unless a variant says otherwise
BASE = {"fidelity_loss_weight": 1.0}


def run_variant(name: str, configs, out: Path, vae_only: bool, redcnn_rows: dict) -> dict:
    studies, overrides, extra_rows, note = VARIANTS[name]
    configs = list(configs) + study_files(studies)
    base = {**BASE, **overrides, "val_interval": 10**6, "num_workers": 0}
    vae_path, vae_info = train_vae(configs, base, out)

    run_dir = out / "runs" / name
    if run_dir.exists():  # a stale run of other code or settings must not be resumed
        shutil.rmtree(run_dir)
    parser = parser_for(configs, {**base, "output_dir": str(run_dir), "model_path": str(run_dir / "model.pt"),
                                  "pretrained_vae": vae_path})
    parser.get_parsed_content("vae_stage").run()
    trainer = parser.get_parsed_content("diffusion_trainer")
    result = {"variant": name, "note": note, "studies": list(studies), "overrides": overrides, "vae": vae_info}
    vae, unet = trainer.vae, trainer.unet
    result["params"] = {"vae_encoder": count(vae.encoder), "vae_decoder": count(vae.decoder),
                        "fidelity_path": count(getattr(vae, "fidelity", None)), "unet": count(unet)}
    hu_windows = parser.get_parsed_content("hu_windows")
    if vae_only:
        trainer.training_state.scale_factor = trainer.vae_stage.scale_factor
        enhancer = trainer.build_enhancer(hu_windows)
    else:
        timer = Timer(trainer)
        start = time.perf_counter()
        trainer.run()
        phase1 = parser.get_parsed_content("phase1_epochs")
        result["diffusion"] = {
            "seconds": time.perf_counter() - start,
            "s_per_iteration_phase1": timer.per_iteration(slice(0, phase1)),
            "s_per_iteration_phase2": timer.per_iteration(slice(phase1, None)),
            "iterations": trainer.state.iteration,
            "final_terms": {k: v for k, v in (trainer.state.output or {}).items() if k != "lr"},
        }
        trainer.export(parser.get_parsed_content("model_path"), hu_windows)
        from bundle.inference import CTEnhancer

        enhancer = CTEnhancer.from_file(parser.get_parsed_content("model_path"))
    enhancer.eval()

    for split in ("validation", "test"):  # choose on validation, report test (print_table)
        rows, timings = score_split(parser, split, enhancer, extra_rows, vae_only, redcnn_rows)
        result["rows" if split == "test" else "validation_rows"] = {row: mean_rows(v) for row, v in rows.items()}
        if split == "test":
            result["inference_seconds"] = timings
    return result


def score_split(parser, split, enhancer, extra_rows, vae_only, redcnn_rows):
    """Every row's scores on one split: ``({row: [per volume]}, {row: seconds})``."""
    rows: dict[str, list[dict]] = {}
    timings: dict[str, float] = {}
    for patient, source, target in test_pairs(parser, split):
        outputs = {"identity": lambda: source, "vae_ceiling": lambda: enhancer.reconstruct(target)}
        if enhancer.has_fidelity_path or enhancer.residual:
            outputs["ceiling"] = lambda: enhancer.ceiling(source, target)
        if enhancer.has_fidelity_path:
            outputs["no_diffusion"] = lambda: enhancer.reconstruct(source, source)
        for suffix, settings in extra_rows.items():
            if "residual" in settings:  # the ceiling of the residual formula on this VAE
                outputs[f"ceiling_{suffix}"] = lambda s=settings: _with(enhancer, s, lambda: enhancer.ceiling(source, target))
        if not vae_only:
            outputs["model"] = lambda: enhancer.enhance(source).hu
            for suffix, settings in extra_rows.items():
                outputs[f"model_{suffix}"] = lambda s=settings: enhancer.enhance(source, **s).hu
        for row, make in outputs.items():
            start = time.perf_counter()
            with torch.no_grad():
                pred = make()
            timings[row] = timings.get(row, 0.0) + time.perf_counter() - start
            rows.setdefault(row, []).append(score(pred, target))
        for row, method in redcnn_rows.items():
            rows.setdefault(row, []).append(score(method.enhance(source).hu, target))
    return rows, timings


def measure_costs(names: list[str], configs, repeats: int = 5) -> dict[str, dict]:
    """Median seconds of one iteration per stage and of one test-volume enhancement, per variant."""
    import statistics

    setups = {}
    for name in names:
        studies, overrides = VARIANTS[name][:2]
        parser = parser_for(list(configs) + study_files(studies),
                            {**BASE, **overrides, "output_dir": "/tmp/fidelity_costs", "num_workers": 0})
        stage = parser.get_parsed_content("vae_stage")
        trainer = parser.get_parsed_content("diffusion_trainer")
        trainer.training_state.scale_factor = 1.0
        batch = next(iter(parser.get_parsed_content("train_loader")))
        _, source, _ = test_pairs(parser)[0]
        setups[name] = (parser, stage, trainer, batch, source)
    times: dict[str, dict[str, list[float]]] = {n: {} for n in names}

    def timed(name, key, fn):
        start = time.perf_counter()
        fn()
        times[name].setdefault(key, []).append(time.perf_counter() - start)

    def vae_step(stage, batch):
        stage.vae.train()
        loss, _ = stage.compute_loss(batch)
        loss.backward()
        stage.optimizer.zero_grad(set_to_none=True)

    def diffusion_step(trainer, batch):
        loss, _ = trainer.compute_loss(batch)
        loss.backward()
        trainer.optimizer.zero_grad(set_to_none=True)

    from bundle.utils.precision import autocast

    for r in range(repeats + 1):  # the first round warms up and is dropped
        for name, (parser, stage, trainer, batch, source) in setups.items():
            with autocast(stage.state.device, stage.precision):
                timed(name, "vae", lambda: vae_step(stage, batch))
            with autocast(trainer.state.device, trainer.precision):
                if r == 0:
                    trainer.enter_phase2()  # the VAE's optimizer groups (never stepped here)
                trainer.training_state.phase = 1
                trainer._freeze_vae()
                timed(name, "phase1", lambda: diffusion_step(trainer, batch))
                trainer.training_state.phase = 2
                trainer.vae.requires_grad_(True)
                timed(name, "phase2", lambda: diffusion_step(trainer, batch))
            if r <= 2:  # a whole volume takes long: two timed rounds
                enhancer = trainer.build_enhancer(parser.get_parsed_content("hu_windows"))
                timed(name, "enhance", lambda: enhancer.enhance(source))
            if r == 0:
                times[name] = {}
    return {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}


def _with(enhancer, settings: dict, fn):
    """Call ``fn`` with enhancer attributes temporarily set."""
    saved = {k: getattr(enhancer, k) for k in settings}
    for k, v in settings.items():
        setattr(enhancer, k, v)
    try:
        return fn()
    finally:
        for k, v in saved.items():
            setattr(enhancer, k, v)


def redcnn_methods(args) -> dict:
    try:
        from bundle.evaluation.redcnn import RedCNNMethod, train_redcnn
    except ImportError:
        print("RED-CNN baseline not available (bundle.evaluation.redcnn missing): no CNN row")
        return {}
    path = Path(args.redcnn)
    if not path.is_file() and args.train_redcnn:
        start = time.perf_counter()
        train_redcnn(["configs/redcnn.yaml", "configs/demo.yaml"],
                     {"redcnn_path": str(path), "output_dir": str(Path(args.output) / "redcnn"), "num_workers": 0})
        print(f"RED-CNN trained in {time.perf_counter() - start:.0f} s -> {path}")
    if not path.is_file():
        print(f"no RED-CNN model at {path}: no CNN row (--train-redcnn trains one)")
        return {}
    return {"redcnn": RedCNNMethod(str(path))}


ROW_ORDER = ("identity", "redcnn", "vae_ceiling", "ceiling", "no_diffusion")


def print_table(results: dict[str, dict]) -> None:
    print("\nTest split, soft-tissue window [-160, 240] HU: per-slice PSNR (dB) / SSIM over tissue slices, "
          "pooled volume PSNR (dB).\n")
    print("| variant | row | PSNR | SSIM | volume PSNR | VAE s/it | phase 1 s/it | phase 2 s/it | "
          "VAE params (enc+dec+path) | U-Net params |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    shared_done = set()
    for name, r in results.items():
        rows = r["rows"]
        order = [k for k in ROW_ORDER if k in rows] + sorted(k for k in rows if k not in ROW_ORDER)
        p = r["params"]
        d = r.get("diffusion", {})
        for row in order:
            if row in ("identity", "redcnn") and row in shared_done:
                continue  # the same numbers for every variant
            m = rows[row]
            cost = ["", "", "", "", ""]
            if row.startswith("model") and row == "model" or (row == "vae_ceiling" and "model" not in rows):
                cost = [_f(r["vae"].get("s_per_iteration"), 2), _f(d.get("s_per_iteration_phase1"), 2),
                        _f(d.get("s_per_iteration_phase2"), 2),
                        f"{(p['vae_encoder'] + p['vae_decoder'] + p['fidelity_path']) / 1e6:.2f} M",
                        f"{p['unet'] / 1e6:.2f} M"]
            label = "(all)" if row in ("identity", "redcnn") else name
            print(f"| {label} | {row} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['volume_psnr']:.2f} | " + " | ".join(cost) + " |")
            if row in ("identity", "redcnn"):
                shared_done.add(row)
    chosen = [(r["validation_rows"]["model"]["psnr"], name) for name, r in results.items()
              if "model" in r.get("validation_rows", {})]
    if chosen:
        best_psnr, best = max(chosen)
        test = results[best]["rows"]["model"]
        print(f"\nChosen on the validation split: {best} (model {best_psnr:.2f} dB there); its test split: "
              f"{test['psnr']:.2f} dB / {test['ssim']:.4f}. Variants are ranked on validation only; the test "
              "numbers above are reported once, never used to choose.")


def _f(value, digits) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--config", nargs="+", default=CONFIGS)
    args.add_argument("--output", default="runs/fidelity_study")
    args.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args.add_argument("--vae-only", action="store_true", help="VAE stage and ceilings only (screening)")
    args.add_argument("--set", nargs="*", default=[], metavar="ID=JSON", help="overrides for every variant")
    args.add_argument("--redcnn", default="models/redcnn_demo.pt", help="RED-CNN model file (the CNN row)")
    args.add_argument("--train-redcnn", action="store_true", help="train the RED-CNN first if its file is missing")
    args.add_argument("--threads", type=int, default=1, help="torch threads (others share the machine)")
    args.add_argument("--force", action="store_true", help="re-run variants that have results")
    args.add_argument("--table", action="store_true", help="only print the table of saved results")
    args.add_argument("--costs", action="store_true", help="time one iteration per stage, variants side by side")
    opts = args.parse_args()
    torch.set_num_threads(opts.threads)
    logging.basicConfig(level=logging.WARNING)
    out = Path(opts.output)
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in opts.set)}
    results_dir = out / ("results_vae_only" if opts.vae_only else "results")
    results_dir.mkdir(parents=True, exist_ok=True)
    if opts.costs:
        costs = measure_costs(opts.variants, opts.config)
        (out / "costs.json").write_text(json.dumps(costs, indent=2))
        print("\n| variant | VAE pre-training s/it | phase 1 s/it | phase 2 s/it | enhance test volume s |")
        print("|---|---|---|---|---|")
        for name, c in costs.items():
            print(f"| {name} | {c['vae']:.2f} | {c['phase1']:.2f} | {c['phase2']:.2f} | {c['enhance']:.1f} |")
        return

    if not opts.table:
        cnn = {} if opts.vae_only else redcnn_methods(opts)
        for name in opts.variants:
            path = results_dir / f"{name}.json"
            if path.is_file() and not opts.force:
                continue
            if extra:
                studies, overrides, *rest = VARIANTS[name]
                VARIANTS[name] = (studies, {**extra, **overrides}, *rest)
            start = time.perf_counter()
            result = run_variant(name, opts.config, out, opts.vae_only, cnn)
            result["total_seconds"] = time.perf_counter() - start
            path.write_text(json.dumps(result, indent=2))
            print(f"{name}: done in {result['total_seconds']:.0f} s -> {path}", flush=True)

    results = {}
    for name in VARIANTS:
        path = results_dir / f"{name}.json"
        if path.is_file() and name in opts.variants:
            results[name] = json.loads(path.read_text())
    print_table(results)


if __name__ == "__main__":
    main()
