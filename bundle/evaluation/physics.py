"""The physicists' measures of one test volume, for every method's output (AAPM TG-233 style).

:class:`VolumePhysics` computes once per volume what all methods share (tissue-class masks, the
flat regions where noise is measured, lesion and insert ROIs, the full-dose scan's own noise
texture and resolution) and then :meth:`VolumePhysics.measure` scores an output:

- ``vs_clean``: PSNR/SSIM/RMSE per window against the clean truth (the noise-free scan), when the
  simulation knows it: against the noisy full-dose scan, smoothing below its noise looks good;
- ``hu``: bias and RMSE per tissue class (air, lung, fat, soft tissue, bone), against the clean
  truth (else the full-dose scan); ``inserts``: bias in the central 60 % of each QA insert;
- ``noise``: sigma and the NPS mean frequency of the output's noise in flat ROIs (output minus
  the clean truth, each ROI's mean removed: a local offset is bias, not noise), and both
  relative to the full-dose scan's (1.0 = same texture); the ROIs are the largest side that
  gives at least ``MIN_NPS_ROIS`` of them (:func:`nps_roi_size`);
- ``ttf50``: the TTF50 (lp/mm) at each high-contrast QA insert's edge and their mean, relative to
  the full-dose scan's;
- ``lesions``: per lesion or low-contrast disc, the measured contrast, CNR and the
  non-prewhitening d' (measured contrast, the output's NPS and, where the volume has inserts, its
  TTF); in the summary also ``contrast_kept``, the share of the lesions' contrast (measured in the
  same ROIs of the clean truth, else the full-dose scan) that the output keeps: the least-squares
  slope of its contrasts on the truth's, 1 = all kept, so a row that lowers noise by smoothing faint
  lesions away shows it even where its d' still beats the input's; on the input and the
  full-dose scan (``ideal=True``) also the prewhitening observer's with the nominal contrast:
  the ideal observer's d' on a linear system's image, which no
  processing of it can raise, so the input's bounds every enhancer's. ``d_prime_ideal`` on the
  lesion's central slice (the bound for processing one slice at a time), ``d_prime_ideal_3d``
  over every slice the lesion crosses (the bound for any method: the simulator's slices carry
  independent noise, so their d'^2 add).

Lesion and insert positions come from the ``objects`` JSON of the demo data, mapped into the
evaluation's voxel layout through the affines (:func:`objects_in_layout`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from bundle.data.phantom import LABELS
from bundle.metrics import (
    NoisePowerSpectrum,
    class_masks,
    cnr,
    find_flat_region,
    hu_accuracy,
    noise_power_spectrum,
    npw_detectability,
    pw_detectability,
    square_rois,
    task_transfer_function,
    window_metrics,
)

logger = logging.getLogger(__name__)

__all__ = ["LABEL_CLASSES", "MIN_NPS_ROIS", "Truth", "VolumePhysics", "nps_roi_size", "objects_in_layout"]

# the phantom's labels grouped into the classes of bundle.metrics.hu_accuracy
LABEL_CLASSES = {
    "air": [LABELS["air"]],
    "lung": [LABELS["lung"]],
    "fat": [LABELS["fat"]],
    "soft tissue": [LABELS[n] for n in ("muscle", "mediastinum", "heart", "liver", "spleen", "kidney", "vessel",
                                         "bowel", "lesion", "csf", "water")],
    "bone": [LABELS["bone"]],
}
# erosion and dilation within each slice (8-connected): the slices are scanned one by one
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 2)
# what a lesion can lie in: the soft tissues but the lesion itself
_HOSTS = [label for label in LABEL_CLASSES["soft tissue"] if label != LABELS["lesion"]]
# inserts whose edge is sharp enough against their background for a TTF: the fat (-100 HU nominal,
# -100 to -140 against the QA variants' bodies) in, the soft-tissue and water inserts (<= 65) out
TTF_MIN_CONTRAST_HU = 90.0
ROI_SIZES = (16, 12, 8, 6)  # NPS ROI sides tried, largest first (:func:`nps_roi_size`)
# the fewest ROIs an NPS is read from when a smaller side gives them: LIDC's test slab fitted two 12 px
# ROIs, and its second full-dose scan read 0.92 / 0.94 of the first's noise / mean frequency (114 of 8 px:
# 0.99 / 0.995); 8 of 16 px read a phantom's input within 2 % of the simulation's answer, and a smaller side
# moves d' (it loses the low frequencies a larger lesion's d' reads), so no more are asked for
MIN_NPS_ROIS = 8


def nps_roi_size(flat: np.ndarray, sizes=ROI_SIZES, min_rois: int = MIN_NPS_ROIS) -> int | None:
    """The NPS ROI side for the flat mask ``flat`` ``(S, H, W)``: the largest of ``sizes`` that gives
    ``min_rois`` ROIs (a larger ROI resolves lower frequencies, more ROIs average the estimate's own
    noise), else the one whose ROIs cover the most area; None where none fits."""
    counts = {size: len(square_rois(flat, flat, size, max_rois=min_rois)) for size in sizes}
    enough = [size for size in sizes if counts[size] >= min_rois]
    if enough:
        return max(enough)
    fits = [size for size in sizes if counts[size]]
    if not fits:
        return None
    size = max(fits, key=lambda n: (counts[n] * n * n, n))
    logger.warning("flat regions fit only %d NPS ROIs of %d px (fewer than %d): noise and texture are coarse here",
                   counts[size], size, min_rois)
    return size


@dataclass
class Truth:
    """What the simulation knows about one test volume, on the evaluation's voxel grid.

    ``clean``, ``labels``, ``repeat``: ``(S, H, W)`` arrays or None; ``lesions`` and ``inserts``
    with centres in that grid's voxels (:func:`objects_in_layout`); ``pixel_mm``: in-plane size,
    ``slice_mm``: slice spacing.
    """

    pixel_mm: float
    slice_mm: float = 0.0
    clean: np.ndarray | None = None
    labels: np.ndarray | None = None
    repeat: np.ndarray | None = None
    lesions: list[dict] = field(default_factory=list)
    inserts: list[dict] = field(default_factory=list)


def objects_in_layout(objects: dict, layout_affine: np.ndarray) -> tuple[list[dict], list[dict]]:
    """``(lesions, inserts)`` of an objects JSON with their centres moved from the file's
    ``(slice, row, col)`` voxels (``affine_ras`` maps ``(col, row, slice)``) into the voxels of
    an array whose affine is ``layout_affine`` (maps its ``(axis0, axis1, axis2)`` to RAS)."""
    file_affine = np.asarray(objects["affine_ras"], dtype=np.float64)
    to_layout = np.linalg.inv(np.asarray(layout_affine, dtype=np.float64)) @ file_affine

    def move(centre) -> tuple[float, float, float]:
        k, j, i = (float(v) for v in centre)
        return tuple(float(v) for v in (to_layout @ np.array([i, j, k, 1.0]))[:3])

    lesions = [{**lesion, "centre": move(lesion["centre"])} for lesion in objects.get("lesions", [])]
    inserts = []
    for insert in objects.get("inserts", []):  # cylinders through every slice: (row, col) only
        s, r, c = move((0.0, *insert["centre"]))
        inserts.append({**insert, "centre": (r, c)})
    return lesions, inserts


def _disc(shape2d, centre, radius_px) -> np.ndarray:
    yy, xx = np.ogrid[: shape2d[0], : shape2d[1]]
    return np.hypot(yy - centre[0], xx - centre[1]) < radius_px


class VolumePhysics:
    """Measures of one test volume (module docstring).

    Args:
        target: the full-dose scan ``(S, H, W)`` HU.
        truth: :class:`Truth` (what the simulation knows; all optional).
        windows: the metric windows, for ``vs_clean``.
        min_tissue_fraction: as in :func:`bundle.metrics.window_metrics`.
    """

    def __init__(self, target: np.ndarray, truth: Truth, windows, min_tissue_fraction: float = 0.05) -> None:
        self.target = np.asarray(target, dtype=np.float64)
        self.truth = truth
        self.windows = windows
        self.min_tissue_fraction = min_tissue_fraction
        self.reference = truth.clean if truth.clean is not None else self.target
        self._labels = None if truth.labels is None else np.rint(truth.labels)
        if self._labels is not None:
            self.masks = class_masks(self.reference, self._labels.astype(np.int64), LABEL_CLASSES)
        else:
            self.masks = class_masks(self.reference)
        self.flat = self._flat_mask()
        self.roi_size = nps_roi_size(self.flat)
        self.slice_mm = truth.slice_mm or truth.pixel_mm
        if self._labels is not None:
            soft = np.isin(self._labels, LABEL_CLASSES["soft tissue"])
            self._soft_interior = ndimage.binary_erosion(soft, structure=_IN_PLANE, iterations=2)
        self.lesion_rois = [self._lesion_rois(lesion) for lesion in truth.lesions]
        for lesion, rois in zip(truth.lesions, self.lesion_rois):
            if rois is None:
                logger.warning("lesion at %s (radius %.1f mm) left out of d': no core or background ROI",
                               lesion["centre"], lesion["radius_mm"])
        self.ttf_inserts = [i for i in truth.inserts if abs(self._edge_contrast(i)) >= TTF_MIN_CONTRAST_HU]
        # each lesion's contrast in the truth, in the ROIs every output is measured in
        self.lesion_contrasts = [None if rois is None else float(self.reference[rois[0]].mean() - self.reference[rois[1]].mean())
                                 for rois in self.lesion_rois]
        self.full_dose = self._measure(self.target, full_dose=True)

    def _flat_mask(self) -> np.ndarray:
        """Where noise ROIs may lie. With labels: the interiors of soft-tissue organs and of the QA
        water (2 pixels in from every edge, lesions and inserts kept out): with the clean truth
        subtracted, anatomy there is not mistaken for noise. Without: flat soft tissue found in
        the reference."""
        labels = self._labels
        if labels is None:
            return find_flat_region(self.reference)
        soft = np.isin(labels, [LABELS[n] for n in ("liver", "spleen", "muscle", "heart", "water", "kidney")])
        flat = ndimage.binary_erosion(soft, structure=_IN_PLANE, iterations=2)
        objects = np.isin(labels, [LABELS["lesion"], LABELS["insert"]])
        return flat & ~ndimage.binary_dilation(objects, structure=_IN_PLANE, iterations=2)

    # --- noise --------------------------------------------------------------------------------
    def _noise_rois(self, output: np.ndarray, full_dose: bool) -> np.ndarray | None:
        if self.roi_size is None:
            return None
        if self.truth.clean is not None:
            noise = output - self.truth.clean
        elif full_dose and self.truth.repeat is not None:  # two realisations: noise without truth
            noise = (output - self.truth.repeat) / math.sqrt(2.0)
        else:
            noise = output
        rois = square_rois(noise, self.flat, self.roi_size, max_rois=400)
        if not len(rois):
            return None
        # each ROI's mean removed (TG-233): a local HU offset is bias (``hu``), not noise texture
        return rois - rois.mean(axis=(1, 2), keepdims=True)

    def noise_spectrum(self, output: np.ndarray, full_dose: bool = False) -> NoisePowerSpectrum | None:
        """The NPS of ``output`` ``(S, H, W)`` HU in the flat ROIs (None where none fit): the one every
        noise and d' measure here reads; ``full_dose``: ``output`` is the full-dose scan (without the
        clean truth its noise is then read against the second realisation)."""
        rois = self._noise_rois(np.asarray(output, dtype=np.float64).reshape(self.target.shape), full_dose)
        return noise_power_spectrum(rois, self.truth.pixel_mm, detrend="none") if rois is not None else None

    # --- resolution ---------------------------------------------------------------------------
    def _edge_contrast(self, insert: dict) -> float:
        """The insert's nominal HU minus its background's, the median of the reference in a ring
        3-6 mm (at least 2-3 pixels: past the edge's blur) outside its edge; a low-contrast disc
        nearby does not move a median. Against the body, not against 0 HU: a QA variant's water is
        at -5..45 HU."""
        radius_px = insert["radius_mm"] / self.truth.pixel_mm
        inner, outer = max(3.0 / self.truth.pixel_mm, 2.0), max(6.0 / self.truth.pixel_mm, 3.0)
        shape2d = self.reference.shape[1:]
        ring = (_disc(shape2d, insert["centre"], radius_px + outer)
                & ~_disc(shape2d, insert["centre"], radius_px + inner))
        return float(insert["hu"] - np.median(self.reference[:, ring]))

    def _ttf(self, output: np.ndarray) -> dict[str, Any]:
        results = {}
        for insert in self.ttf_inserts:
            ttf = task_transfer_function(output, insert["centre"], insert["radius_mm"], self.truth.pixel_mm)
            results[insert["name"]] = ttf
        return results

    # --- lesions ------------------------------------------------------------------------------
    def _cross_sections(self, lesion: dict) -> np.ndarray:
        """The lesion's radius (mm) on every slice, 0 where it does not cross: a sphere's circles
        (the phantom paints ``distance < radius`` at slice centres), a QA disc's (a cylinder
        through the volume) full radius on every slice."""
        radius, count = lesion["radius_mm"], self.target.shape[0]
        if lesion.get("through_slices"):
            return np.full(count, float(radius))
        dz = np.abs(np.arange(count) - lesion["centre"][0]) * self.slice_mm
        return np.sqrt(np.clip(radius**2 - dz**2, 0.0, None))

    def _lesion_rois(self, lesion: dict) -> tuple[np.ndarray, np.ndarray] | None:
        """Masks of a lesion's core (70 % of its radius, on the slices within 70 % of its radius
        of its centre) and its surrounding annulus; with labels, the core 2 pixels from any other
        tissue class and the annulus in the lesion's host organ, 2 pixels in from its edges."""
        s_count, rows, cols = self.target.shape
        pixel = self.truth.pixel_mm
        core = np.zeros(self.target.shape, bool)
        ring = np.zeros(self.target.shape, bool)
        near = np.zeros(self.target.shape, bool)  # the lesion's rim, 2 pixels wide: where its host is
        _, centre_r, centre_c = lesion["centre"]
        radius = lesion["radius_mm"]
        for s, r_here in enumerate(self._cross_sections(lesion)):
            if lesion.get("through_slices") and (s < 2 or s >= s_count - 2):
                continue
            if r_here < math.sqrt(1 - 0.7**2) * radius:  # |dz| >= 0.7 R
                continue
            r_px = r_here / pixel
            disc = _disc((rows, cols), (centre_r, centre_c), r_px)
            core[s] = _disc((rows, cols), (centre_r, centre_c), max(0.7 * r_px, 0.75))
            near[s] = _disc((rows, cols), (centre_r, centre_c), r_px + 2) & ~disc
            outer = r_px + 3 + max(2 * r_px, 4)
            ring[s] = _disc((rows, cols), (centre_r, centre_c), outer) & ~_disc((rows, cols), (centre_r, centre_c), r_px + 3)
        if self._labels is not None:
            # the scanner's blur carries lung or fat into a core at an organ's edge (not limited to
            # the lesion's label: a disc under a pixel across may label none)
            core &= self._soft_interior
            crossed = core.any(axis=(1, 2))
            ring[~crossed], near[~crossed] = False, False
            # the host: the soft tissue the lesion's rim lies in most (a ring's majority can be a
            # larger neighbouring organ); the ring in it alone, else lung or fat near an organ's
            # edge would be measured as contrast
            around = self._labels[near & np.isin(self._labels, _HOSTS)]
            if not around.size:
                return None
            values, counts = np.unique(around, return_counts=True)
            host = self._labels == values[np.argmax(counts)]
            ring &= ndimage.binary_erosion(host, structure=_IN_PLANE, iterations=2)
        if core.sum() < 1 or ring.sum() < 10:
            return None
        return core, ring

    # --- one output ---------------------------------------------------------------------------
    def measure(self, output, ideal: bool = False) -> dict[str, Any]:
        """Every measure of one method's output ``(S, H, W)`` (or ``(1, S, H, W)``) HU.

        ``ideal``: also the ideal observer's d' (module docstring), for images a linear system
        made (the input, a full-dose scan): on an enhancer's output its NPS and the nominal
        contrast describe no linear system, and the number would mean nothing.
        """
        return self._measure(np.asarray(output, dtype=np.float64).reshape(self.target.shape), full_dose=False,
                             ideal=ideal)

    def _measure(self, output: np.ndarray, full_dose: bool, ideal: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if self.truth.clean is not None:
            result["vs_clean"] = window_metrics(output, self.truth.clean, self.windows, self.min_tissue_fraction)
        result["hu"] = hu_accuracy(output, self.reference, self.masks)
        inserts = {}
        for insert in self.truth.inserts:
            roi = np.broadcast_to(_disc(output.shape[1:], insert["centre"], 0.6 * insert["radius_mm"] / self.truth.pixel_mm),
                                  output.shape)
            error = output[roi] - self.reference[roi]
            inserts[insert["name"]] = {"nominal_hu": insert["hu"], "bias": float(error.mean()),
                                       "rmse": float(np.sqrt((error**2).mean()))}
        if inserts:
            result["inserts"] = inserts

        nps = self.noise_spectrum(output, full_dose)
        if nps is not None:
            result["noise"] = {"sigma": math.sqrt(nps.variance), "nps_mean_frequency": nps.mean_frequency,
                               "nps_frequency": nps.frequency.tolist(), "nps": nps.radial.tolist(),
                               "rois": nps.num_rois, "roi_size": self.roi_size}
        ttfs = self._ttf(output)
        if ttfs:
            values = {name: ttf.ttf50 for name, ttf in ttfs.items()}
            finite = [v for v in values.values() if math.isfinite(v)]
            result["ttf50"] = {"per_insert": values, "mean": float(np.mean(finite)) if finite else float("nan")}
        mean_ttf = None
        if ttfs:
            grid = next(iter(ttfs.values())).frequency
            stacked = np.stack([np.interp(grid, t.frequency, t.ttf) for t in ttfs.values()])
            mean_curve = stacked.mean(axis=0)
            mean_ttf = lambda f: np.interp(f, grid, mean_curve, right=0.0)  # noqa: E731

        lesions = []
        for lesion, rois_here, truth_contrast in zip(self.truth.lesions, self.lesion_rois, self.lesion_contrasts):
            if rois_here is None:
                continue
            core, ring = rois_here
            contrast = float(output[core].mean() - output[ring].mean())
            entry = {"radius_mm": lesion["radius_mm"], "contrast_nominal": lesion["contrast_hu"],
                     "contrast_measured": contrast, "contrast_truth": truth_contrast, "cnr": cnr(output, core, ring)}
            if nps is not None:
                entry["d_prime"] = npw_detectability(nps, lesion["radius_mm"], abs(contrast), ttf=mean_ttf)
                if ideal:
                    nominal = abs(lesion["contrast_hu"])
                    entry["d_prime_ideal"] = pw_detectability(nps, lesion["radius_mm"], nominal, ttf=mean_ttf)
                    radii = self._cross_sections(lesion)
                    entry["d_prime_ideal_3d"] = pw_detectability(nps, radii[radii > 0], nominal, ttf=mean_ttf)
            lesions.append(entry)
        if lesions:
            result["lesions"] = lesions
            truth = np.array([entry["contrast_truth"] for entry in lesions])
            measured = np.array([entry["contrast_measured"] for entry in lesions])
            result["lesion_summary"] = {
                "cnr": float(np.mean([entry["cnr"] for entry in lesions])),
                "d_prime": float(np.mean([entry.get("d_prime", np.nan) for entry in lesions])),
                # a slope, not a mean of ratios: a disc whose truth reads ~0 HU would dominate those
                "contrast_kept": float(truth @ measured / (truth @ truth)) if truth @ truth > 0 else float("nan"),
            }
            if ideal and nps is not None:
                for key in ("d_prime_ideal", "d_prime_ideal_3d"):
                    result["lesion_summary"][key] = float(np.mean([entry[key] for entry in lesions]))
        if not full_dose:
            self._relative(result)
        return result

    def _relative(self, result: dict) -> None:
        """Noise and resolution relative to the full-dose scan's (1.0 = the same)."""
        reference = self.full_dose
        if "noise" in result and "noise" in reference:
            result["noise"]["sigma_rel"] = result["noise"]["sigma"] / reference["noise"]["sigma"]
            result["noise"]["nps_mean_frequency_rel"] = (
                result["noise"]["nps_mean_frequency"] / reference["noise"]["nps_mean_frequency"]
            )
        if "ttf50" in result and "ttf50" in reference and reference["ttf50"]["mean"] > 0:
            result["ttf50"]["mean_rel"] = result["ttf50"]["mean"] / reference["ttf50"]["mean"]
        if "lesion_summary" in result and "lesion_summary" in reference:
            for key in ("cnr", "d_prime"):
                base = reference["lesion_summary"][key]
                result["lesion_summary"][f"{key}_rel"] = result["lesion_summary"][key] / base if base else float("nan")
