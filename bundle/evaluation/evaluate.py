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

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bundle.evaluation import report
from bundle.evaluation.methods import Method, Pair
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

__all__ = ["Evaluation", "as_pair", "panel_slice"]

logger = logging.getLogger(__name__)

SOFT_TISSUE = (-160.0, 240.0)
def as_pair(item: dict, index: int = 0) -> Pair:
    """A transformed datalist item -> :class:`Pair`: plain float32 tensors ``(1, S, H, W)`` in HU."""

    def plain(x):
        x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
        return x.float().contiguous()

    patient = item.get("patient") or Path(str(item.get("source_path", f"volume{index:03d}"))).name
    return Pair(patient=str(patient), source=plain(item["source"]), target=plain(item["target"]))


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

    # --- helpers ------------------------------------------------------------------------------
    def _pairs(self, data, limit: int | None) -> Iterator[Pair]:
        for index in range(len(data) if limit is None else min(limit, len(data))):
            yield as_pair(data[index], index)

    def _bar(self, iterable, **kwargs):
        return tqdm(iterable, disable=not self.progress, dynamic_ncols=True, **kwargs)

    def score(self, pred_hu: torch.Tensor, target_hu: torch.Tensor, flat_mask=None) -> dict[str, dict[str, float]]:
        """One volume's metrics in every window: ``{window name: {metric: value}}``."""
        return window_metrics(pred_hu, target_hu, self.windows, self.min_tissue_fraction, flat_mask=flat_mask)

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
                "per_volume": {},
                "seconds": [],
            }
            if status is not None:
                logger.info("%s: %s", method.name, status)
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
            test_volumes.append({
                "patient": pair.patient,
                "shape": list(pair.target.shape[1:]),
                "panel_slice": index,
                "flat_region_voxels": int(flat.sum()),
                # biased low (the mask is where the target is flattest), but a useful reference:
                # an output far below it is smoothing more than the full-dose scan has noise
                "target_noise_sigma": noise_sigma(pair.target, flat),
            })
        if not test_volumes:
            raise ValueError("no test pairs: the datalist's 'test' list is empty.")

        for name, row in rows.items():
            if row["status"] != "ok":
                continue
            volumes = list(row["per_volume"].values())
            row["metrics"] = {w: mean_metrics([v[w] for v in volumes]) for w in volumes[0]}
            row["seconds_per_volume"] = sum(row["seconds"]) / len(row["seconds"])

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
            "seconds_total": None,
        }
        results["plot"] = report.save_steps_plot(self.output_dir / "psnr_vs_steps.png", results, self.methods)
        results["seconds_total"] = time.perf_counter() - start
        report.write_report(self.output_dir, results)
        return results

    @staticmethod
    def _count(data, limit):
        n = len(data)
        return n if limit is None else min(n, limit)
