"""Files of an evaluation run, all written atomically (``bundle.utils.io``):

* ``report.md``: one table per window (methods x per-slice PSNR, SSIM, RMSE, volume PSNR, noise
  sigma, seconds per volume), then the protocol, data, settings, tuning, plot and panels;
* ``metrics.json``: ``{method: {window: {metric: mean over test volumes}}}``, e.g.
  ``metrics["identity"]["[-160,240]"]["psnr"]``; only the methods that ran;
* ``evaluation.json``: everything (per-volume numbers, seconds, tuning grids, statuses, settings);
* ``panels/<patient>.png``: per test volume, one row per method: input, output, target,
  |output - target|, uncertainty (sample spread; "n/a" for deterministic methods), one slice, in
  the panel window;
* ``psnr_vs_steps.png``: key-window PSNR against DDIM steps (with seconds per volume) next to
  the baselines, and PSNR against seconds per volume for every method (quality vs time).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bundle.utils.io import atomic_path, atomic_write_json, atomic_write_text
from bundle.utils.names import safe_name
from bundle.utils.plain import plain

__all__ = ["save_panel", "save_physics_figures", "save_steps_plot", "save_sweep_plot", "write_report"]

METRIC_COLUMNS = (
    ("psnr", "PSNR (dB)", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("rmse", "RMSE (HU)", "{:.2f}"),
    ("volume_psnr", "volume PSNR (dB)", "{:.2f}"),
    ("noise_sigma", "noise σ (HU)", "{:.2f}"),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=fig.dpi, format=path.suffix.lstrip("."))


def save_panel(
    path: Path,
    patient: str,
    slice_index: int,
    source: np.ndarray,
    target: np.ndarray,
    rows: dict[str, dict[str, np.ndarray | None]],
    window=(-160.0, 240.0),
    difference_max: float = 100.0,
    note: str = "",
) -> None:
    """One PNG: per method a row ``input | output | target | |output - target| | uncertainty``.

    ``rows``: ``{method: {"output": (H, W) HU, "uncertainty": (H, W) HU or None, "label": row
    label (default the method's name)}}``. Images in
    ``window`` (grey); the difference on ``[0, difference_max]`` HU; the uncertainty on
    ``[0, its 99th percentile]`` HU (shown in the title).
    """
    plt = _pyplot()
    lo, hi = window
    columns = ("input", "output", "target", "|output − target|", "uncertainty")
    n = max(1, len(rows))
    fig, axes = plt.subplots(n, len(columns), figsize=(2.2 * len(columns), 2.3 * n + 0.4), dpi=80, squeeze=False)
    title = f"{patient}, slice {slice_index}, window [{lo:g}, {hi:g}] HU" + (f"\n{note}" if note else "")
    fig.suptitle(title, fontsize=9, y=0.998)
    for r, (name, row) in enumerate(rows.items()):
        output = row["output"]
        images = [source, output, target]
        for c, image in enumerate(images):
            axes[r, c].imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        # |difference| of the values a reader sees: both clipped to the display window
        difference = np.abs(np.clip(output, lo, hi) - np.clip(target, lo, hi))
        axes[r, 3].imshow(difference, cmap="magma", vmin=0, vmax=difference_max, interpolation="nearest")
        uncertainty = row.get("uncertainty")
        if uncertainty is None:
            axes[r, 4].text(0.5, 0.5, "n/a", ha="center", va="center", transform=axes[r, 4].transAxes)
            axes[r, 4].set_facecolor("0.9")
            title_u = columns[4]
        else:
            top = float(np.percentile(uncertainty, 99)) or 1.0
            axes[r, 4].imshow(uncertainty, cmap="viridis", vmin=0, vmax=top, interpolation="nearest")
            title_u = f"uncertainty (0–{top:.3g} HU)"
        for c in range(len(columns)):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0 or (c == 4 and uncertainty is not None):
                title = {3: f"|diff| (0–{difference_max:g} HU)", 4: title_u}.get(c, columns[c])
                axes[r, c].set_title(title, fontsize=8)
        axes[r, 0].set_ylabel(row.get("label", name), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    _save_figure(fig, Path(path))
    plt.close(fig)


WIDE_WINDOW = (-1000.0, 1500.0)  # lung to dense bone: where a soft-window panel hides bone errors
ERROR_MAX_HU = 100.0


def _oracle(name: str) -> bool:
    """Rows that see the target (the ceilings): left out of the figures, which compare methods."""
    return "ceiling" in name


def _crop(image: np.ndarray, centre, half: int) -> np.ndarray:
    r, c = (int(round(v)) for v in centre)
    r = min(max(r, half), image.shape[0] - half)
    c = min(max(c, half), image.shape[1] - half)
    return image[r - half : r + half, c - half : c + half]


def save_physics_figures(folder: Path, patient: str, slice_index: int, outputs: dict[str, np.ndarray],
                         target: np.ndarray, physics, measures: dict[str, dict | None], output_dir: Path) -> list[str]:
    """Per test volume: the NPS curves of every row, the outputs in a wide window with their HU
    error maps, and zoomed ROIs (a lesion, a bone edge). Returns the paths relative to
    ``output_dir``."""
    plt = _pyplot()
    folder = Path(folder)
    stem = safe_name(patient, "volume", max_length=80)
    written = []

    curves = {name: m["noise"] for name, m in measures.items() if m and "noise" in m and not _oracle(name)}
    if curves:
        fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=90)
        for name, noise in curves.items():
            style = {"identity": "k--", "full_dose": "k-"}.get(name, "-")
            ax.plot(noise["nps_frequency"], noise["nps"], style, label=f"{name} (σ {noise['sigma']:.1f} HU)")
        ax.set_xlabel("spatial frequency (cycles/mm)")
        ax.set_ylabel("NPS (HU² mm²)")
        ax.set_yscale("log")
        ax.set_title(f"{patient}: noise power spectrum in flat ROIs", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"{stem}_nps.png"
        _save_figure(fig, path)
        plt.close(fig)
        written.append(str(path.relative_to(output_dir)))

    reference = physics.reference
    names = [name for name in outputs if name != "identity" and not _oracle(name)]  # identity = the input
    fig, axes = plt.subplots(2, len(names), figsize=(2.1 * len(names), 4.6), dpi=80, squeeze=False)
    what = "clean truth" if physics.truth.clean is not None else "full-dose scan"
    fig.suptitle(f"{patient}, slice {slice_index}: window [{WIDE_WINDOW[0]:g}, {WIDE_WINDOW[1]:g}] HU (top), "
                 f"error against the {what}, ±{ERROR_MAX_HU:g} HU (bottom)", fontsize=8)
    for c, name in enumerate(names):
        image = outputs[name][slice_index]
        axes[0, c].imshow(image, cmap="gray", vmin=WIDE_WINDOW[0], vmax=WIDE_WINDOW[1], interpolation="nearest")
        axes[1, c].imshow(image - reference[slice_index], cmap="RdBu_r", vmin=-ERROR_MAX_HU, vmax=ERROR_MAX_HU,
                          interpolation="nearest")
        axes[0, c].set_title(name, fontsize=8)
        for r in range(2):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = folder / f"{stem}_wide.png"
    _save_figure(fig, path)
    plt.close(fig)
    written.append(str(path.relative_to(output_dir)))

    rois = []  # (title, slice, centre, window)
    lesions = [lesion for lesion in physics.truth.lesions if lesion["radius_mm"] >= 2.5]
    if lesions:
        lesion = max(lesions, key=lambda item: (item["radius_mm"], -abs(item["contrast_hu"])))
        s = slice_index if lesion.get("through_slices") else int(round(lesion["centre"][0]))
        rois.append((f"lesion {lesion['contrast_hu']:+.0f} HU, r {lesion['radius_mm']:.1f} mm", s,
                     lesion["centre"][1:], (-160.0, 240.0)))
    bone = [i for i in physics.truth.inserts if i["hu"] >= 1000]
    if bone:
        insert = bone[0]
        rois.append((f"{insert['name']} edge", slice_index,
                     (insert["centre"][0], insert["centre"][1] + insert["radius_mm"] / physics.truth.pixel_mm), WIDE_WINDOW))
    elif physics.truth.labels is not None:
        from bundle.data.phantom import LABELS

        bone_mask = np.rint(physics.truth.labels[slice_index]) == LABELS["bone"]
        if bone_mask.any():
            edge = bone_mask & ~np.roll(bone_mask, 1, axis=1)
            r, c = np.argwhere(edge)[len(np.argwhere(edge)) // 2]
            rois.append(("bone edge", slice_index, (r, c), WIDE_WINDOW))
    if rois:
        half = max(8, min(16, target.shape[1] // 8))
        fig, axes = plt.subplots(len(rois), len(names), figsize=(1.7 * len(names), 1.9 * len(rois) + 0.3),
                                 dpi=90, squeeze=False)
        for r, (title, s, centre, window) in enumerate(rois):
            for c, name in enumerate(names):
                axes[r, c].imshow(_crop(outputs[name][s], centre, half), cmap="gray", vmin=window[0], vmax=window[1],
                                  interpolation="nearest")
                axes[r, c].set_xticks([])
                axes[r, c].set_yticks([])
                if r == 0:
                    axes[r, c].set_title(name, fontsize=8)
            axes[r, 0].set_ylabel(f"{title}\n[{window[0]:g}, {window[1]:g}]", fontsize=7)
        fig.tight_layout()
        path = folder / f"{stem}_zoom.png"
        _save_figure(fig, path)
        plt.close(fig)
        written.append(str(path.relative_to(output_dir)))
    return written


SWEEP_MEASURES = (
    ("key-window PSNR against clean truth (dB)", lambda r, key: r.get("vs_clean", {}).get(key, {}).get("psnr")),
    ("noise σ relative to full dose", lambda r, key: r.get("noise", {}).get("sigma_rel")),
    ("NPS mean frequency relative to full dose", lambda r, key: r.get("noise", {}).get("nps_mean_frequency_rel")),
    ("TTF50 relative to full dose", lambda r, key: r.get("ttf50", {}).get("mean_rel")),
    ("lesion d' (NPW)", lambda r, key: r.get("lesion_summary", {}).get("d_prime")),
)


def save_sweep_plot(path: Path, results: dict[str, Any]) -> str:
    """One panel per measure against dose, a line per row."""
    plt = _pyplot()
    sweep = results["sweep"]
    doses = sorted(sweep, key=float)
    rows = sorted({name for d in doses for name in sweep[d]})
    fig, axes = plt.subplots(1, len(SWEEP_MEASURES), figsize=(3.6 * len(SWEEP_MEASURES), 3.6), dpi=80)
    for ax, (title, value) in zip(axes, SWEEP_MEASURES):
        for name in rows:
            points = [(float(d), value(sweep[d][name], results["key_window"])) for d in doses if name in sweep[d]]
            points = [(d, v) for d, v in points if v is not None and math.isfinite(v)]
            if points:
                ax.plot(*zip(*points), "o-", label=name)
        ax.set_xscale("log")
        ax.set_xticks([float(d) for d in doses], [f"{float(d):g}" for d in doses])
        ax.minorticks_off()
        ax.set_xlabel("dose fraction")
        ax.set_title(title, fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, Path(path))
    plt.close(fig)
    return Path(path).name


def physics_tables(results: dict[str, Any]) -> list[str]:
    """The report's sections of the physicists' measures (means over test volumes)."""
    rows = {name: row["physics_summary"] for name, row in results["methods"].items()
            if row["status"] == "ok" and row.get("physics_summary")}
    if not rows:
        return []
    key = results["key_window"]
    lines = []
    if any("vs_clean" in r for r in rows.values()):
        lines += [f"## Against the clean truth (noise-free scan), key window {key} HU", "",
                  "| method | PSNR (dB) | SSIM | RMSE (HU) |", "|---|---|---|---|"]
        for name, r in rows.items():
            m = r.get("vs_clean", {}).get(key)
            if m:
                lines.append(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['rmse']:.2f} |")
        lines.append("")
    classes = sorted({c for r in rows.values() for c in r.get("hu", {})}, key=lambda c: ["air", "lung", "fat", "soft tissue", "bone"].index(c) if c in ["air", "lung", "fat", "soft tissue", "bone"] else 9)
    if classes:
        lines += ["## HU accuracy per tissue class: bias / RMSE (HU)", "",
                  "| method | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
        for name, r in rows.items():
            cells = [f"{r['hu'][c]['bias']:+.1f} / {r['hu'][c]['rmse']:.1f}" if c in r.get("hu", {}) else "" for c in classes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    inserts = sorted({i for r in rows.values() for i in r.get("inserts", {})})
    if inserts:
        lines += ["## QA inserts: bias (HU) in the central 60 %", "", "| method | " + " | ".join(inserts) + " |",
                  "|---" * (len(inserts) + 1) + "|"]
        for name, r in rows.items():
            cells = [f"{r['inserts'][i]['bias']:+.1f}" if i in r.get("inserts", {}) else "" for i in inserts]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Noise, texture, resolution, low contrast", "",
              "| method | noise σ (HU) | σ / full dose | NPS mean freq (1/mm) | / full dose | TTF50 (lp/mm) | / full dose "
              "| lesion CNR | lesion contrast kept | lesion d' | d' / full dose | d' / attainable | flag |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ideal = rows.get("identity", {}).get("lesion_summary", {})
    bound = ideal.get("d_prime_ideal_3d")  # over every slice: a bound for any method
    for name, r in rows.items():
        noise, ttf, lesion = r.get("noise", {}), r.get("ttf50", {}), r.get("lesion_summary", {})
        flags = []
        # rows that see the target (full dose, the VAE ceiling) may pass it: they hold more than the input
        sees_target = results["methods"][name].get("uses_target") or name == "full_dose"
        # a per-slice method sees one input slice: the ideal observer on that slice bounds it
        limit = ideal.get("d_prime_ideal") if results["methods"][name].get("per_slice") else bound
        if limit is not None and not sees_target and name != "identity" and lesion.get("d_prime", 0) > limit:
            flags.append(f"d' above the ideal observer's on the input ({limit:.2f})")
        if noise.get("sigma_rel", 1) < 0.8:  # it can win PSNR against the full-dose scan by smoothing
            flags.append(f"smoother than full dose (σ ×{noise['sigma_rel']:.2f})")
        if lesion.get("contrast_kept", 1) < 0.8:  # quieter by smoothing faint lesions away
            flags.append(f"loses lesion contrast (×{lesion['contrast_kept']:.2f})")
        if abs(noise.get("nps_mean_frequency_rel", 1) - 1) > 0.15:
            flags.append(f"other texture (NPS mean frequency ×{noise['nps_mean_frequency_rel']:.2f})")
        flag = "; ".join(flags)
        lines.append(
            f"| {name} | {_fmt(noise.get('sigma'), '{:.2f}')} | {_fmt(noise.get('sigma_rel'), '{:.2f}')} | "
            f"{_fmt(noise.get('nps_mean_frequency'), '{:.3f}')} | {_fmt(noise.get('nps_mean_frequency_rel'), '{:.2f}')} | "
            f"{_fmt(ttf.get('mean'), '{:.3f}')} | {_fmt(ttf.get('mean_rel'), '{:.2f}')} | {_fmt(lesion.get('cnr'), '{:.2f}')} | "
            f"{_fmt(lesion.get('contrast_kept'), '{:.2f}')} | "
            f"{_fmt(lesion.get('d_prime'), '{:.2f}')} | {_fmt(lesion.get('d_prime_rel'), '{:.2f}')} | "
            f"{_fmt(lesion.get('d_prime_attainable_rel'), '{:.2f}')} | {flag} |"
        )
    lines += ["", "Noise: the output minus the clean truth in flat ROIs, each ROI's mean removed (the full-dose row: "
              "its own noise); NPS mean frequency: power-weighted over the 2D spectrum. Flags: a row with under 80 % of "
              "the full-dose scan's noise (it can win PSNR by smoothing), one that keeps under 80 % of the lesions' contrast (the "
              "slope of its lesion contrasts on the clean truth's, in the same ROIs) or an NPS mean frequency off by more than 15 %. TTF50: at the edges of the QA inserts of at least "
              "90 HU contrast against the body around them. Lesions: the demo's liver lesions and the QA discs; d' of the non-prewhitening "
              "observer with the measured contrast, the row's NPS and (QA) its TTF. Means over the test volumes "
              "that have each measure.", ""]
    if bound is not None:
        full = rows.get("full_dose", {}).get("lesion_summary", {})
        lines += [f"The ideal observer (prewhitening, nominal contrast, the input's NPS and TTF) reaches d' "
                  f"{ideal['d_prime_ideal']:.2f} on one input slice through each lesion's centre and {bound:.2f} over "
                  "every slice it crosses (their noise is independent, d'^2 adds)"
                  + (f"; on the full-dose scan {full['d_prime_ideal']:.2f} and {full['d_prime_ideal_3d']:.2f}"
                     if "d_prime_ideal_3d" in full else "")
                  + ". No processing of the input raises it: the first bounds methods that work one slice at a time "
                  "(NLM, BM3D, the 2D RED-CNN), the second any method; a row whose index lies above its bound is "
                  "flagged (the index overstates). d' / attainable: against, per lesion, the full-dose scan's index "
                  "where the input allows it and this bound where it does not (small lesions at low dose), "
                  + (f"{full['d_prime_attainable']:.2f} here" if "d_prime_attainable" in full else "where both rows ran")
                  + ": 1 is all that any enhancer of this input can be asked for.", ""]
    return lines


def save_steps_plot(path: Path, results: dict[str, Any], methods) -> str:
    """Key-window PSNR against DDIM steps (and seconds), and PSNR against seconds per volume."""
    plt = _pyplot()
    key = results["key_window"]
    rows = results["methods"]
    ok = {name: row for name, row in rows.items() if row["status"] == "ok"}
    plain = sorted(
        (m.num_inference_steps, m.name) for m in methods if getattr(m, "is_plain", False) and m.name in ok
    )
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=90)
    if plain:
        steps = [s for s, _ in plain]
        psnr = [ok[name]["metrics"][key]["psnr"] for _, name in plain]
        seconds = [ok[name]["seconds_per_volume"] for _, name in plain]
        left.plot(steps, psnr, "o-", color="C0", label="diffusion (DDIM)")
        twin = left.twinx()
        twin.plot(steps, seconds, "s--", color="C1", alpha=0.7)
        twin.set_ylabel("seconds per volume (squares)", color="C1")
        twin.set_ylim(bottom=0)
        left.set_xscale("log")
        left.set_xticks(steps, [str(s) for s in steps])
        left.set_xticks([], minor=True)
    else:
        left.text(0.5, 0.5, "no plain DDIM rows", ha="center", va="center", transform=left.transAxes)
    for i, (name, row) in enumerate(ok.items()):
        if name in {n for _, n in plain}:
            continue
        if getattr(next((m for m in methods if m.name == name), None), "num_inference_steps", None) is not None:
            continue  # strength / mean-of-samples rows are on the right panel
        left.axhline(row["metrics"][key]["psnr"], linestyle=":", color=f"C{(i + 2) % 10}", label=name)
    left.set_xlabel("DDIM steps")
    left.set_ylabel(f"PSNR {key} (dB, per-slice mean)")
    left.set_title("quality vs sampling steps")
    left.legend(fontsize=7, loc="best")
    for i, (name, row) in enumerate(ok.items()):
        right.scatter(max(row["seconds_per_volume"], 1e-3), row["metrics"][key]["psnr"], color=f"C{i % 10}")
        right.annotate(name, (max(row["seconds_per_volume"], 1e-3), row["metrics"][key]["psnr"]), fontsize=7,
                       xytext=(3, 3), textcoords="offset points")
    right.set_xscale("log")
    right.set_xlabel("seconds per volume (log)")
    right.set_ylabel(f"PSNR {key} (dB)")
    right.set_title("quality vs time")
    fig.tight_layout()
    _save_figure(fig, Path(path))
    plt.close(fig)
    return Path(path).name


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return spec.format(value)


def _seconds(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def metrics_table(results: dict[str, Any], window: str) -> list[str]:
    header = ["method"] + [label for _, label, _ in METRIC_COLUMNS] + ["s / volume"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in results["methods"].items():
        if row["status"] != "ok":
            lines.append(f"| {name} | {row['status']} |" + " |" * (len(header) - 2))
            continue
        values = row["metrics"][window]
        cells = [_fmt(values.get(key), spec) for key, _, spec in METRIC_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_seconds(row['seconds_per_volume'])} |")
    return lines


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items()) or "—"


def write_report(output_dir: Path, results: dict[str, Any]) -> None:
    """``report.md``, ``metrics.json`` and ``evaluation.json`` in ``output_dir``."""
    output_dir = Path(output_dir)
    metrics = {name: row["metrics"] for name, row in results["methods"].items() if row["status"] == "ok"}
    atomic_write_json(output_dir / "metrics.json", plain(metrics))
    physics = {name: row["physics_summary"] for name, row in results["methods"].items() if row.get("physics_summary")}
    if physics:
        atomic_write_json(output_dir / "physics.json", plain({"methods": physics, "sweep": results.get("sweep")}))
    atomic_write_json(output_dir / "evaluation.json", plain(results))

    settings = results["settings"]
    volumes = results["test_volumes"]
    lines = ["# Evaluation report", ""]
    if settings.get("command"):
        lines += ["Made by:", "", "```", str(settings["command"]), "```", ""]
    lines += [
        f"- model: `{settings.get('model_path', 'n/a')}`",
        f"- datalist: `{settings.get('datalist', 'n/a')}`; test volumes: "
        + ", ".join(f"{v['patient']} ({'x'.join(str(s) for s in v['shape'])})" for v in volumes),
        "- noise σ of the target itself in the same flat regions: "
        + ", ".join(f"{v['patient']} {_fmt(v.get('target_noise_sigma'), '{:.1f}')} HU" for v in volumes)
        + " (the full-dose scan has noise too; an output far below this is smoothing anatomy away)",
        "- tuning (classical filters) on validation volumes: " + (", ".join(results["validation_volumes"]) or "none (defaults used)"),
        f"- total time: {results['seconds_total']:.1f} s" if results.get("seconds_total") is not None else "",
        "",
    ]
    for window in results["windows"]:
        marker = " (key window)" if window == results["key_window"] else ""
        lines += [f"## Window {window} HU{marker}", "", "Against the full-dose scan (itself noisy).", ""]
        lines += metrics_table(results, window) + [""]
    lines += physics_tables(results)
    if results.get("sweep_plot"):
        lines += ["## Dose sweep", "", f"![measures against dose]({results['sweep_plot']})", ""]
    lines += [
        "## Protocol",
        "",
        "- Per 2D axial slice, both volumes clipped to the window: PSNR with the window width as the data range, "
        "RMSE in HU, SSIM (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, on the window scaled to [0, 1]); "
        "means over slices, then over volumes (each volume counts once).",
        f"- Slices whose target has less than {results['min_tissue_fraction']:.0%} tissue (HU > {results['tissue_hu']:g}) "
        "are left out: inside a narrow window they have near-zero error and an unbounded PSNR. "
        "Slices used / left out per volume are in `evaluation.json`.",
        f"- PSNR of an exact slice is capped at {results['psnr_cap']:g} dB. `volume PSNR` is one PSNR of the squared "
        "error pooled over the same slices.",
        "- noise σ: standard deviation of the output (clipped to the window) in flat soft-tissue regions of the "
        "target (-150..200 HU, 7x7 local std near the volume's minimum), each 2D region around its own mean; "
        "one mask per volume, the same for every method.",
        "- `identity` is the low-dose input itself. `vae_ceiling` is decode(encode(target)) through the model's "
        "VAE: an oracle that sees the target, the best any output of the latent model can be.",
        "- Seconds: wall time of each method per test volume on this machine (tuning not included; see below).",
        "",
        "## Methods",
        "",
        "| method | status | settings | tuning | tuning s |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["methods"].items():
        tuning = row.get("tuning") or {}
        tuned = ""
        if tuning.get("tuned"):
            tuned = f"chosen {_settings_text(tuning['chosen'])} by {tuning['criterion']} ({tuning['best_psnr']:.2f} dB)"
        elif tuning.get("why"):
            tuned = f"not tuned: {tuning['why']}"
        tuning_seconds = _seconds(row["tuning_seconds"]) if "tuning_seconds" in row else ""
        lines.append(f"| {name} | {row['status']} | {_settings_text(row.get('settings', {}))} | {tuned} | {tuning_seconds} |")
    run_settings = {k: v for k, v in settings.items() if k not in ("command",)}
    lines += ["", "## Settings", "", "```json", json.dumps(plain(run_settings), indent=2), "```", ""]
    lines += ["## Quality vs sampling steps", "", f"![PSNR against steps]({results['plot']})", ""]
    lines += ["## Panels", ""]
    for volume, panel in zip(volumes, results["panels"]):
        lines += [f"### {volume['patient']} (slice {volume['panel_slice']}, window {results['panel_window']} HU)", "",
                  f"![{volume['patient']}]({panel})", ""]
        lines += [f"![{volume['patient']} {Path(figure).stem}]({figure})" for figure in volume.get("figures", [])] + [""]
    atomic_write_text(output_dir / "report.md", "\n".join(line for line in lines if line is not None) + "\n")

