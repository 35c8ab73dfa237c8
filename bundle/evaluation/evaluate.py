"""The evaluation run: methods x windows x test volumes -> numbers, panels, plot and report.

:class:`Evaluation` takes the datalist's test pairs (whole volumes through ``val_transforms``:
HU, ``(1, S, H, W)``, on the scan's own voxels, as training's validation scores them), the
validation pairs (classical filters tune on them) and a list of
:class:`~bundle.evaluation.methods.Method` rows. For every test volume and method it times the
method, scores its output with :func:`~bundle.metrics.window_metrics` in every window (per-slice PSNR/SSIM/RMSE over tissue slices, pooled volume PSNR, noise sigma in
the target's flat regions, one mask per volume for all methods) and keeps one slice for the
panels. Means are over volumes (each volume counts once). ``configs/evaluate.yaml`` declares
the rows; :mod:`bundle.evaluation.report` writes the files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bundle.evaluation import report
from bundle.evaluation.methods import Method, Pair
from bundle.evaluation.physics import Truth, VolumePhysics, objects_in_layout
from bundle.metrics import (
    METRIC_WINDOWS,
    PSNR_CAP,
    TISSUE_HU,
    flat_region_mask,
    mean_metrics,
    noise_sigma,
    window_metrics,
    window_name,
)
from bundle.utils.names import safe_name

__all__ = ["Evaluation", "add_attainable_detectability", "as_pair", "pair_physics", "panel_slice", "summarise_physics",
           "sweep_datasets"]

logger = logging.getLogger(__name__)

SOFT_TISSUE = (-160.0, 240.0)
def as_pair(item: dict, index: int = 0) -> Pair:
    """A transformed datalist item -> :class:`Pair`: plain float32 tensors ``(1, S, H, W)`` in HU,
    with the simulation's truth (``clean``, ``labels``, ``target_repeat``, ``objects``) when the
    item has it."""

    def plain(x):
        if x is None:
            return None
        x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
        return x.float().contiguous()

    target = item["target"]
    affine = np.asarray(target.affine, dtype=np.float64) if hasattr(target, "affine") else None
    spacing = tuple(float(v) for v in target.pixdim) if hasattr(target, "pixdim") else None
    objects = None
    if item.get("objects"):
        objects = json.loads(Path(item["objects"]).read_text())
    patient = item.get("patient") or Path(str(item.get("source_path", f"volume{index:03d}"))).name
    return Pair(patient=str(patient), source=plain(item["source"]), target=plain(target),
                clean=plain(item.get("clean")), labels=plain(item.get("labels")), repeat=plain(item.get("target_repeat")),
                objects=objects, affine=affine, spacing=spacing)


def pair_physics(pair: Pair, windows, min_tissue_fraction: float = 0.05) -> VolumePhysics:
    """The physicists' measures of one volume: what the simulation knows about it (clean truth,
    labels, a second full-dose realisation, lesions and QA inserts in the volume's layout)."""
    spacing = pair.spacing or (1.0, 1.0, 1.0)
    lesions, inserts = ([], [])
    if pair.objects is not None and pair.affine is not None:
        lesions, inserts = objects_in_layout(pair.objects, pair.affine)

    def array(x):
        return None if x is None else x[0].numpy()

    truth = Truth(pixel_mm=float(spacing[1]), slice_mm=float(spacing[0]), clean=array(pair.clean),
                  labels=array(pair.labels), repeat=array(pair.repeat), lesions=lesions, inserts=inserts)
    return VolumePhysics(pair.target[0].numpy(), truth, windows, min_tissue_fraction)


def panel_slice(target_hu: torch.Tensor) -> int:
    """The slice shown in panels: among slices with at least half the most tissue, the one
    nearest the middle of the volume."""
    tissue = (target_hu.reshape(-1, *target_hu.shape[-2:]) > TISSUE_HU).float().mean(dim=(1, 2))
    candidates = torch.nonzero(tissue >= 0.5 * tissue.max()).flatten().tolist()
    middle = (tissue.numel() - 1) / 2
    return int(min(candidates, key=lambda s: (abs(s - middle), s)))


class Evaluation:
    """Score every method on every test pair; write the report, JSON, panels and plot.

    Args:
        test_data: items of ``val_transforms`` (dicts with ``source``, ``target``, ``patient``).
        methods: the rows, in report order.
        output_dir: where everything is written.
        validation_data: items for tuning (same form); only the first ``tuning_volumes`` are used.
        windows: HU windows of the metrics (``[lo, hi]`` each).
        key_window: the window of the plot, the tuning criterion and the headline.
        panel_window: display window of the panels.
        min_tissue_fraction: slices with less tissue than this are left out of per-slice means.
        max_test_volumes: score only the first N test pairs (None: all).
        tuning_volumes: validation pairs used for tuning (None: all).
        difference_max: HU at the top of the |difference| colour scale.
        settings: anything to record in the report (model file, datalist, sampler settings).
        progress: show tqdm bars.
        physics: also the physicists' measures (:mod:`bundle.evaluation.physics`): against the
            clean truth, HU per class and insert, noise texture, TTF, lesion detectability, and a
            ``full_dose`` row (the second full-dose realisation when the datalist has one).
        sweep: ``{dose: test data}`` of other doses; each is scored with ``sweep_methods``.
        sweep_methods: names of the rows run at every sweep dose (default: all but the slow ones
            you leave out here).
        dose: the dose of ``test_data`` (a point of the sweep).
    """

    def __init__(
        self,
        test_data: Iterable[dict],
        methods: Sequence[Method],
        output_dir: str | Path,
        validation_data: Iterable[dict] | None = None,
        windows=METRIC_WINDOWS,
        key_window=SOFT_TISSUE,
        panel_window=SOFT_TISSUE,
        min_tissue_fraction: float = 0.05,
        max_test_volumes: int | None = None,
        tuning_volumes: int | None = 4,
        difference_max: float = 100.0,
        settings: dict[str, Any] | None = None,
        progress: bool = True,
        physics: bool = True,
        sweep: dict | None = None,
        sweep_methods: Sequence[str] | None = None,
        dose: float | None = None,
    ) -> None:
        names = [m.name for m in methods]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"method names must be unique, repeated: {duplicates}")
        self.test_data = test_data
        self.validation_data = validation_data
        self.methods = list(methods)
        self.output_dir = Path(output_dir)
        self.windows = tuple((float(lo), float(hi)) for lo, hi in windows)
        self.key_window = (float(key_window[0]), float(key_window[1]))
        if self.key_window not in self.windows:
            raise ValueError(f"key window {list(key_window)} must be one of the metric windows {list(self.windows)}")
        self.panel_window = tuple(float(v) for v in panel_window)
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.max_test_volumes = max_test_volumes
        self.tuning_volumes = tuning_volumes
        self.difference_max = float(difference_max)
        self.settings = dict(settings or {})
        self.progress = progress
        self.physics = physics
        self.sweep = {float(k): v for k, v in (sweep or {}).items()}
        self.sweep_methods = list(sweep_methods) if sweep_methods is not None else None
        self.dose = dose

    # --- helpers ------------------------------------------------------------------------------
    def _pairs(self, data, limit: int | None) -> Iterator[Pair]:
        for index in range(len(data) if limit is None else min(limit, len(data))):
            yield as_pair(data[index], index)

    def _bar(self, iterable, **kwargs):
        return tqdm(iterable, disable=not self.progress, dynamic_ncols=True, **kwargs)

    def score(self, pred_hu: torch.Tensor, target_hu: torch.Tensor, flat_mask=None) -> dict[str, dict[str, float]]:
        """One volume's metrics in every window: ``{window name: {metric: value}}``."""
        return window_metrics(pred_hu, target_hu, self.windows, self.min_tissue_fraction, flat_mask=flat_mask)

    def volume_physics(self, pair: Pair) -> VolumePhysics | None:
        """The physicists' measures of one test volume (None when switched off)."""
        if not self.physics:
            return None
        return pair_physics(pair, self.windows, self.min_tissue_fraction)

    # --- the run ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Evaluate and write everything; returns the results (also ``evaluation.json``)."""
        start = time.perf_counter()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows: dict[str, dict[str, Any]] = {}
        for method in self.methods:
            status = method.status
            rows[method.name] = {
                "status": "ok" if status is None else status,
                "kind": type(method).__name__,
                "uses_target": method.uses_target,
                "per_slice": bool(method.per_slice),
                "per_volume": {},
                "seconds": [],
            }
            if status is not None:
                logger.info("%s: %s", method.name, status)
            if method.name == "identity" and self.physics:
                rows["full_dose"] = {"status": "ok", "kind": "FullDose", "uses_target": True, "per_volume": {},
                                     "seconds": [], "settings": {"what": "an independent full-dose scan (the "
                                     "second realisation) where the datalist has one, else the target itself"}}
        ready = [m for m in self.methods if rows[m.name]["status"] == "ok"]

        validation: list[Pair] = []
        if self.validation_data is not None and len(self.validation_data):
            validation = list(self._pairs(self.validation_data, self.tuning_volumes))
        for method in self._bar(ready, desc="tuning on validation", unit="method"):
            t0 = time.perf_counter()
            tuning = method.prepare(validation)
            rows[method.name]["tuning"] = tuning
            rows[method.name]["tuning_seconds"] = time.perf_counter() - t0
            rows[method.name]["settings"] = method.settings()

        test_volumes = []
        panels = []
        for pair in self._bar(self._pairs(self.test_data, self.max_test_volumes), desc="test volumes", unit="volume",
                              total=self._count(self.test_data, self.max_test_volumes)):
            flat = flat_region_mask(pair.target)
            index = panel_slice(pair.target)
            shown: dict[str, dict[str, np.ndarray | None]] = {}
            physics = self.volume_physics(pair)
            outputs: dict[str, np.ndarray] = {"input": pair.source[0].numpy()}
            if physics is not None and "full_dose" in rows:
                full = pair.repeat if pair.repeat is not None else pair.target
                rows["full_dose"]["per_volume"][pair.patient] = self.score(full, pair.target, flat)
                rows["full_dose"].setdefault("physics", {})[pair.patient] = physics.measure(full, ideal=True)
                rows["full_dose"]["seconds"].append(0.0)
                outputs["full dose"] = full[0].numpy()
            for method in self._bar(ready, desc=pair.patient, unit="method", leave=False):
                if rows[method.name]["status"] != "ok":
                    continue  # failed on an earlier volume
                t0 = time.perf_counter()
                try:
                    result = method.enhance(pair.source, pair.target if method.uses_target else None)
                except Exception as error:  # noqa: BLE001 - one broken row must not lose the others
                    logger.exception("%s failed on %s", method.name, pair.patient)
                    rows[method.name]["status"] = f"failed on {pair.patient}: {type(error).__name__}: {error}"
                    continue
                seconds = time.perf_counter() - t0
                pred = result.hu.detach().float().cpu().reshape(pair.target.shape)
                rows[method.name]["per_volume"][pair.patient] = self.score(pred, pair.target, flat)
                rows[method.name]["seconds"].append(seconds)
                if physics is not None:
                    # the input is a linear system's image: its ideal observer bounds every enhancer's
                    rows[method.name].setdefault("physics", {})[pair.patient] = physics.measure(
                        pred, ideal=method.name == "identity")
                    outputs[method.name] = pred[0].numpy()
                uncertainty = result.uncertainty
                key = rows[method.name]["per_volume"][pair.patient][window_name(self.key_window)]
                shown[method.name] = {
                    "label": f"{method.name}\n{key['psnr']:.2f} dB / {key['ssim']:.3f}",
                    "output": pred[0, index].numpy(),
                    "uncertainty": None if uncertainty is None else uncertainty.detach().float().cpu().reshape(pair.target.shape)[0, index].numpy(),
                }
            panel_path = self.output_dir / "panels" / f"{safe_name(pair.patient, 'volume', max_length=80)}.png"
            report.save_panel(
                panel_path, pair.patient, index,
                source=pair.source[0, index].numpy(), target=pair.target[0, index].numpy(), rows=shown,
                window=self.panel_window, difference_max=self.difference_max,
                note=f"row labels: the volume's mean per-slice PSNR / SSIM in {window_name(self.key_window)}",
            )
            panels.append(str(panel_path.relative_to(self.output_dir)))
            figures = []
            if physics is not None:
                figures = report.save_physics_figures(
                    self.output_dir / "panels", pair.patient, index, outputs, pair.target[0].numpy(),
                    physics, {name: row.get("physics", {}).get(pair.patient) for name, row in rows.items()},
                    output_dir=self.output_dir,
                )
            test_volumes.append({
                "patient": pair.patient,
                "shape": list(pair.target.shape[1:]),
                "panel_slice": index,
                "flat_region_voxels": int(flat.sum()),
                # biased low (the mask is where the target is flattest), but a useful reference:
                # an output far below it is smoothing more than the full-dose scan has noise
                "target_noise_sigma": noise_sigma(pair.target, flat),
                "figures": figures,
            })
        if not test_volumes:
            raise ValueError("no test pairs: the datalist's 'test' list is empty.")

        add_attainable_detectability(rows)
        for name, row in rows.items():
            if row["status"] != "ok":
                continue
            volumes = list(row["per_volume"].values())
            row["metrics"] = {w: mean_metrics([v[w] for v in volumes]) for w in volumes[0]}
            row["seconds_per_volume"] = sum(row["seconds"]) / len(row["seconds"])
            if row.get("physics"):
                row["physics_summary"] = summarise_physics(list(row["physics"].values()))

        results = {
            "windows": [window_name(w) for w in self.windows],
            "key_window": window_name(self.key_window),
            "panel_window": window_name(self.panel_window),
            "min_tissue_fraction": self.min_tissue_fraction,
            "tissue_hu": TISSUE_HU,
            "psnr_cap": PSNR_CAP,
            "test_volumes": test_volumes,
            "validation_volumes": [p.patient for p in validation],
            "settings": self.settings,
            "methods": rows,
            "panels": panels,
            "dose": self.dose,
            "seconds_total": None,
        }
        if self.sweep:
            results["sweep"] = self.run_sweep(rows)
            results["sweep_plot"] = report.save_sweep_plot(self.output_dir / "dose_sweep.png", results)
        results["plot"] = report.save_steps_plot(self.output_dir / "psnr_vs_steps.png", results, self.methods)
        results["seconds_total"] = time.perf_counter() - start
        report.write_report(self.output_dir, results)
        return results

    def run_sweep(self, rows: dict[str, dict]) -> dict[str, dict[str, dict]]:
        """The sweep doses' test sets through ``sweep_methods`` (already tuned): ``{dose: {row:
        summary}}``, with the main test set's rows at its own dose."""
        names = self.sweep_methods or [m.name for m in self.methods]
        chosen = [m for m in self.methods if m.name in names and rows.get(m.name, {}).get("status") == "ok"]
        sweep: dict[str, dict[str, dict]] = {}
        if self.dose is not None:
            sweep[f"{self.dose:g}"] = {
                name: _sweep_summary(rows[name]) for name in ["identity", "full_dose", *names] if name in rows
                and rows[name].get("status") == "ok" and "metrics" in rows[name]
            }
        for dose, data in sorted(self.sweep.items(), reverse=True):
            per_row: dict[str, dict] = {name: {"per_volume": {}, "physics": {}} for name in ["identity", *[m.name for m in chosen]]}
            for pair in self._bar(self._pairs(data, self.max_test_volumes), desc=f"dose {dose:g}", unit="volume",
                                  total=self._count(data, self.max_test_volumes)):
                physics = self.volume_physics(pair)
                flat = flat_region_mask(pair.target)
                candidates = [("identity", lambda p=pair: p.source)] + [
                    (m.name, lambda m=m, p=pair: m.enhance(p.source, p.target if m.uses_target else None).hu)
                    for m in chosen if m.name != "identity"
                ]
                for name, make in candidates:
                    pred = make().detach().float().cpu().reshape(pair.target.shape)
                    per_row[name]["per_volume"][pair.patient] = self.score(pred, pair.target, flat)
                    if physics is not None:
                        per_row[name]["physics"][pair.patient] = physics.measure(pred, ideal=name == "identity")
            summaries = {}
            for name, row in per_row.items():
                volumes = list(row["per_volume"].values())
                row["metrics"] = {w: mean_metrics([v[w] for v in volumes]) for w in volumes[0]} if volumes else {}
                if row["physics"]:
                    row["physics_summary"] = summarise_physics(list(row["physics"].values()))
                summaries[name] = _sweep_summary(row)
            sweep[f"{dose:g}"] = summaries
        return sweep

    @staticmethod
    def _count(data, limit):
        n = len(data)
        return n if limit is None else min(n, limit)


def _nanmean(values) -> float:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else float("nan")


def add_attainable_detectability(rows: dict[str, dict]) -> None:
    """The lesion d' a method can be asked for, per test volume: for each lesion the full-dose scan's
    (the non-prewhitening index) where the input allows it, else the input's ideal observer over every
    slice the lesion crosses, which no processing of the input raises (below a few millimetres at
    25 % dose the full-dose scan's index lies above it: ``scripts/lesion_transfer.py --detectability``,
    docs/quality.md). Each row's volume gets ``d_prime_attainable`` (the mean over its lesions) and
    ``d_prime_attainable_rel`` (its d' over that; 1 = all that can be asked). Needs the ``identity``
    and ``full_dose`` rows' physics; volumes without both are left as they are."""
    identity = rows.get("identity", {}).get("physics", {})
    full = rows.get("full_dose", {}).get("physics", {})
    for patient in identity.keys() & full.keys():
        bounds = [entry.get("d_prime_ideal_3d") for entry in identity[patient].get("lesions", [])]
        targets = [entry.get("d_prime") for entry in full[patient].get("lesions", [])]
        if not bounds or len(bounds) != len(targets) or None in bounds or None in targets:
            continue  # the same lesions in every row (fixed ROIs): a mismatch means a measure is missing
        attainable = float(np.mean([min(target, bound) for target, bound in zip(targets, bounds)]))
        for row in rows.values():
            summary = row.get("physics", {}).get(patient, {}).get("lesion_summary")
            if summary is not None and "d_prime" in summary and attainable > 0:
                summary["d_prime_attainable"] = attainable
                summary["d_prime_attainable_rel"] = summary["d_prime"] / attainable


def summarise_physics(volumes: list[dict]) -> dict[str, Any]:
    """Means over test volumes of the physicists' measures (each volume counts once; a volume
    without a measure, e.g. no QA insert, leaves it out)."""
    out: dict[str, Any] = {}
    with_clean = [v["vs_clean"] for v in volumes if "vs_clean" in v]
    if with_clean:
        out["vs_clean"] = {w: mean_metrics([v[w] for v in with_clean]) for w in with_clean[0]}
    classes = sorted({c for v in volumes for c in v.get("hu", {})})
    out["hu"] = {c: {k: _nanmean(v["hu"][c][k] for v in volumes if c in v.get("hu", {})) for k in ("bias", "rmse")}
                 for c in classes}
    inserts = sorted({i for v in volumes for i in v.get("inserts", {})})
    if inserts:
        out["inserts"] = {i: {k: _nanmean(v["inserts"][i][k] for v in volumes if i in v.get("inserts", {}))
                              for k in ("bias", "rmse")} for i in inserts}
    for group, keys in (("noise", ("sigma", "sigma_rel", "nps_mean_frequency", "nps_mean_frequency_rel")),
                        ("ttf50", ("mean", "mean_rel")),
                        ("lesion_summary", ("cnr", "d_prime", "cnr_rel", "d_prime_rel", "contrast_kept"))):
        present = [v[group] for v in volumes if group in v]
        if present:
            out[group] = {k: _nanmean(p.get(k) for p in present) for k in keys}
    # the input's and the full-dose scan's only (VolumePhysics.measure); the attainable d' where the
    # evaluation had both rows (add_attainable_detectability)
    for key in ("d_prime_ideal", "d_prime_ideal_3d", "d_prime_attainable", "d_prime_attainable_rel"):
        ideal = [v["lesion_summary"][key] for v in volumes if key in v.get("lesion_summary", {})]
        if ideal:
            out["lesion_summary"][key] = _nanmean(ideal)
    return out


def _sweep_summary(row: dict) -> dict[str, Any]:
    """The numbers of one row that the dose sweep plots."""
    physics = row.get("physics_summary", {})
    out = {"metrics": row.get("metrics", {})}
    for key in ("vs_clean", "noise", "ttf50", "lesion_summary", "hu"):
        if key in physics:
            out[key] = physics[key]
    return out


def sweep_datasets(datalist: str | Path, doses, transform, test_dose: float | None = None) -> dict[float, Any]:
    """``{dose: dataset}`` of the datalist's ``test_dose<d>`` lists (``ctv2v demo-data`` writes
    them); a dose without a list is left out with one log line, and so is ``test_dose``, the
    ``test`` list's own (its sweep point is the main test, which a second draw would overwrite)."""
    import bundle.data.datalist
    from bundle.data.transforms import make_dataset

    out = {}
    for dose in doses or ():
        if test_dose is not None and f"{float(dose):g}" == f"{float(test_dose):g}":
            logger.info("dose sweep: %g is the test list's own dose; its point is the test list", float(dose))
            continue
        key = f"test_dose{float(dose):g}"
        try:
            items = bundle.data.datalist.load_datalist(datalist, key)
        except KeyError:
            logger.info("dose sweep: the datalist has no %r list; dose %g left out", key, float(dose))
            continue
        out[float(dose)] = make_dataset(items, transform=transform, cache="none")
    return out
