"""Learning curves of training runs from their logs: every validation row and the fidelity path's
training loss against training minutes, one figure (issue 13: is "the U-Net adds nothing" a budget
fact or a design fact?). Reads what `python -m monai.bundle run training ... > run.log` prints
(StatsHandler iteration lines, EnhancementValidator's "validation at epoch" lines); minutes are wall
clock from the log's first line. Run from the bundle root, e.g.

    python scripts/learning_curves.py runs/q/*.log --output docs/quality_curves.png

Prints one table per run (validation rows per epoch, with the minute they were measured) and
writes the figure: left, validation PSNR of each row (``model``, ``ceiling``...) against minutes,
the input as a level; right, the path's VAE-stage training term per epoch (mean of its logged
iterations).
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d+)")
ITERATION = re.compile(r"Epoch: (\d+)/(\d+), Iter: \d+/\d+ -- (.*)$")
VALIDATION = re.compile(r"validation at epoch (\d+), window (\S+): (.*)$")
ROW = re.compile(r"(\w+) PSNR ([\d.]+) dB SSIM ([\d.]+)")
# the path's term: its L1 or squared error in the VAE stage, loss_fidelity in phase 2
PATH_TERMS = ("fidelity_l1", "fidelity_mse", "loss_fidelity")


def parse(log: Path) -> dict:
    """``{"validation": [(minute, epoch, {row: psnr})], "path": [(minute, stage, epoch, term, mean)]}``."""
    start = None
    validation, path = [], []
    sums: dict[tuple, list[float]] = defaultdict(list)
    last_minute: dict[tuple, float] = {}
    stage, previous_total = 0, None
    for line in log.read_text(errors="replace").splitlines():
        stamp = STAMP.match(line)
        if not stamp:
            continue
        when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(stamp.group(2)) / 1000
        start = when if start is None else start
        minute = (when - start) / 60
        if m := VALIDATION.search(line):
            rows = {name: float(psnr) for name, psnr, _ in ROW.findall(m.group(3))}
            validation.append((minute, int(m.group(1)), rows))
        elif m := ITERATION.search(line):
            epoch, total = int(m.group(1)), int(m.group(2))
            if previous_total is not None and total != previous_total:
                stage += 1  # the VAE stage's epochs, then the diffusion trainer's
            previous_total = total
            values = dict(re.findall(r"(\w+): ([-+\d.e]+)", m.group(3)))
            for term in PATH_TERMS:
                if term in values:
                    sums[(stage, epoch, term)].append(float(values[term]))
                    last_minute[(stage, epoch, term)] = minute
    for key, values in sums.items():
        path.append((last_minute[key], *key, sum(values) / len(values)))
    return {"validation": validation, "path": sorted(path)}


def table(name: str, run: dict) -> str:
    rows = sorted({r for _, _, values in run["validation"] for r in values})
    if not rows:
        return f"### {name}\n\nno validation yet\n"
    lines = [f"### {name}", "", "| epoch | minute | " + " | ".join(rows) + " |", "|---" * (len(rows) + 2) + "|"]
    for minute, epoch, values in run["validation"]:
        lines.append(f"| {epoch} | {minute:.1f} | " + " | ".join(f"{values[r]:.2f}" if r in values else "" for r in rows) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    identities: set[float] = set()
    styles = {"model": "-o", "ceiling": "--^", "identity": ":", "vae_ceiling": "-.", "redcnn": "--s"}
    for i, (name, run) in enumerate(runs.items()):
        color = f"C{i % 10}"
        rows = sorted({r for _, _, values in run["validation"] for r in values})
        for row in rows:
            if row == "vae_ceiling":
                continue  # the spec decoder alone: tens of dB lower, it would flatten the axis
            points = [(m, v[row]) for m, _, v in run["validation"] if row in v]
            if row == "identity":  # the input: one level for the whole run, drawn across
                identities.add(points[0][1])
                continue
            left.plot(*zip(*points), styles.get(row, "-x"), color=color, label=f"{name}: {row}", markersize=4)
        for term in PATH_TERMS[:2]:  # the VAE stage's term (phase 2 logs a weighted total)
            points = [(m, value) for m, stage, _, t, value in run["path"] if t == term and stage == 0]
            if points:
                right.plot(*zip(*points), "-", color=color, label=f"{name}: {term}")
    for level in sorted(identities):
        left.axhline(level, color="grey", linestyle=":", label=f"input (identity) {level:.2f}")
    left.set(xlabel="training minutes", ylabel="validation PSNR [-160, 240] HU vs full dose (dB)",
             title="validation rows")
    right.set(xlabel="training minutes", ylabel="path training loss (epoch mean)", yscale="log",
              title="the path's VAE-stage term (L1, MSE: other units)")
    left.set_xlim(left=0)
    right.set_xlim(left=0)
    left.legend(fontsize=6)
    right.legend(fontsize=6)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("logs", nargs="+", type=Path, help="training logs")
    args.add_argument("--output", type=Path, default=Path("runs/learning_curves.png"))
    opts = args.parse_args()
    runs = {}
    for log in opts.logs:
        if not log.is_file():
            args.error(f"no such log: {log}")
        runs[log.stem] = parse(log)
    for name, run in runs.items():
        print(table(name, run))
    plot(runs, opts.output)
    print(f"written: {opts.output}")


if __name__ == "__main__":
    main()
