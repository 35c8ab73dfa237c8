"""What a noise level nearer the full-dose scan's buys: the model's output blended with its source,
``out + a * (source - out)``, scored on one split of a datalist for several ``a`` per model file.

The model leaves 0.55-0.60 of the full-dose scan's noise, and its QA inserts' bias is blur at
their edges (docs/quality.md), so giving back a fraction of the source (its noise and its edges)
is the cheapest lever towards both. Each model is sampled once per volume; every ``a`` reuses that
sample. Rows are named ``blend<a>_seed<i>`` and summarised per ``a`` like scripts/seed_spread.py.
Run from the bundle root:

    python scripts/source_blend.py --datalist data/demo_qa/datalist.json --split validation \\
        --model runs/q7/grad2_s{0,1,2}/model.pt --output runs/q7/val_blend
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
from pathlib import Path

from bundle.evaluation.methods import DiffusionSampling, Enhancement, Method

SEED_SPREAD = Path(__file__).resolve().parent / "seed_spread.py"


class SourceBlend(Method):
    """One model file's DDIM output with ``alpha`` of the source given back. Rows built on the same
    ``sampling`` share its output for the volume last enhanced."""

    def __init__(self, sampling: DiffusionSampling, alpha: float, name: str) -> None:
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha = {alpha!r}: a fraction of the source in [0, 1]")
        self.sampling = sampling
        self.alpha = float(alpha)
        self.name = name

    def settings(self) -> dict:
        return {"source_blend": self.alpha, **self.sampling.settings()}

    def enhance(self, source_hu, target_hu=None) -> Enhancement:
        key = (tuple(source_hu.shape), float(source_hu.double().sum()))
        cached = getattr(self.sampling, "_blend_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, self.sampling.enhance(source_hu).hu.cpu())
            self.sampling._blend_cache = cached
        out = cached[1]
        return Enhancement(hu=out + self.alpha * (source_hu.to(out.device, out.dtype) - out))


@functools.cache  # one module for rows_config and main
def load_seed_spread():
    spec = importlib.util.spec_from_file_location("seed_spread", SEED_SPREAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows_config(models: list[str], alphas: list[float], steps: int) -> tuple[dict, list]:
    """``({id: DiffusionSampling config} per model, [SourceBlend config] per model and alpha)``."""
    sampling_config = load_seed_spread().sampling_config
    samplings = {f"sampling_{i}": sampling_config(path, steps) for i, path in enumerate(models)}
    rows = [{"_target_": "source_blend.SourceBlend", "sampling": f"@sampling_{i}", "alpha": alpha,
             "name": f"blend{alpha:g}_seed{i}"} for i in range(len(models)) for alpha in alphas]
    return samplings, rows


def main() -> None:
    import sys

    seed_spread = load_seed_spread()
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--model", nargs="+", required=True, help="diffusion model files, one per seed")
    args.add_argument("--alpha", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.3], help="fractions of the source")
    args.add_argument("--steps", type=int, default=20, help="DDIM steps")
    args.add_argument("--datalist", default="data/demo/datalist.json")
    args.add_argument("--split", default="validation", help="the datalist's list to score (scripts/seed_spread.py)")
    args.add_argument("--config", nargs="*", default=["configs/demo.yaml"], help="overrides of configs/evaluate.yaml")
    args.add_argument("--output", default="runs/source_blend")
    opts = args.parse_args()
    for path in opts.model:
        if not Path(path).is_file():
            args.error(f"no such model file: {path}")
    try:
        overrides = seed_spread.split_overrides(opts.split)
        samplings, rows = rows_config(opts.model, opts.alpha, opts.steps)
    except ValueError as error:
        args.error(str(error))

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the rows' _target_: source_blend.SourceBlend
    table = seed_spread.score(opts.config, {"datalist": opts.datalist, "output_dir": opts.output,
                                            "baselines": [{"_target_": "bundle.evaluation.methods.Identity"}],
                                            "diffusion_rows": rows, **samplings, **overrides},
                              "python scripts/source_blend.py")
    (Path(opts.output) / "source_blend.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
