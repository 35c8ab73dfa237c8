"""``ctv2v evaluate``: the evaluation run of ``configs/evaluate.yaml`` (a thin wrapper).

Equivalent to ``python -m monai.bundle run evaluate --config_file configs/evaluate.yaml`` with
``--datalist``, ``--model_path`` and ``--output_dir`` overrides; ``--config`` adds config files
after it (e.g. ``configs/demo.yaml``), ``--set ID=VALUE`` overrides any config id (the value is
read as YAML: ``--set sampling_steps=[10,50]``). Writes ``OUTPUT/report.md``, ``metrics.json``,
``evaluation.json``, ``panels/*.png`` and ``psnr_vs_steps.png``.

The configs name ``configs/common.yaml`` relative to the bundle root, so when the current folder
is not a bundle root the command works from the installed bundle's root (paths given on the
command line are made absolute first).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

EVALUATE_CONFIG = "configs/evaluate.yaml"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score the model against identity, its VAE ceiling and baselines on the test pairs",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    parser.add_argument("--datalist", type=Path, help="datalist JSON (its 'test' pairs are scored)")
    parser.add_argument("--model", type=Path, help="model file (model_path; default models/model.pt)")
    parser.add_argument("--output", type=Path, help="output folder (output_dir)")
    parser.add_argument("--redcnn", type=Path, help="RED-CNN baseline file (redcnn_path; default models/redcnn.pt)")
    parser.add_argument("--train-redcnn", action="store_true", help="train the RED-CNN baseline first if its file is missing")
    parser.add_argument(
        "--config", action="append", default=[], type=Path, metavar="FILE",
        help="extra config file merged after configs/evaluate.yaml (repeatable), e.g. configs/demo.yaml",
    )
    parser.add_argument("--set", action="append", default=[], metavar="ID=VALUE", dest="overrides",
                        help="override a config id (repeatable); VALUE is parsed as YAML")
    parser.set_defaults(func=run)


def bundle_root() -> Path:
    """The folder holding ``configs/`` (the current one if it has it, else the package's parent)."""
    here = Path.cwd()
    if (here / EVALUATE_CONFIG).is_file():
        return here
    return Path(__file__).resolve().parents[2]


def parse_overrides(pairs: list[str]) -> dict:
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects ID=VALUE, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run(args) -> int:
    import os

    from monai.bundle import run as bundle_run

    from bundle.utils.validation import user_error

    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as error:
        print(f"ctv2v evaluate: error: {error}", file=sys.stderr)
        return 2
    root = bundle_root()

    def located(path: Path) -> str:
        # Relative paths stay as given (and so in the report) when the run happens here; from
        # elsewhere they are made absolute, as the run moves to the bundle root.
        return str(path) if root == Path.cwd() else str(path.resolve())

    for key, path in (("datalist", args.datalist), ("model_path", args.model), ("output_dir", args.output),
                      ("redcnn_path", args.redcnn)):
        if path is not None:
            overrides[key] = located(path)
    if args.train_redcnn:
        overrides["train_redcnn"] = True
    extra = [located(p) for p in args.config]
    config_files = [str(root / EVALUATE_CONFIG)] + extra
    missing = [f for f in config_files if not Path(f).is_file()]
    if missing:
        print(f"ctv2v evaluate: error: config file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    overrides.setdefault("command", "ctv2v evaluate " + _describe(args))
    previous = Path.cwd()
    os.chdir(root)
    try:
        bundle_run("evaluate", config_file=config_files, **overrides)
    except Exception as error:
        # a bad setting, model file or missing file: the one line that says so, not the config
        # parser's wrapping RuntimeErrors; anything else keeps its traceback
        cause = user_error(error)
        if cause is None:
            raise
        print(f"ctv2v evaluate: error: {cause}", file=sys.stderr)
        return 2
    finally:
        os.chdir(previous)
    output = overrides.get("output_dir", "the configured output_dir")
    print(f"evaluation written to {output} (report.md, metrics.json, panels/, psnr_vs_steps.png)")
    return 0


def _describe(args) -> str:
    parts = []
    for flag, value in (("--datalist", args.datalist), ("--model", args.model), ("--output", args.output),
                        ("--redcnn", args.redcnn)):
        if value is not None:
            parts += [flag, shlex.quote(str(value))]
    parts += [f"--config {shlex.quote(str(c))}" for c in args.config]
    if args.train_redcnn:
        parts.append("--train-redcnn")
    parts += [f"--set {shlex.quote(o)}" for o in args.overrides]
    return " ".join(parts)
