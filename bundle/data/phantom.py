"""Synthetic CT volumes with anatomy-like structure, for demos, tests and smoke training.

Each seed gives a different patient: a body outline with a subcutaneous fat layer and a muscle
wall; lungs with texture and vessels above a diaphragm whose height varies per patient; heart,
liver, spleen, kidneys, aorta and vena cava; a spine of vertebrae and discs; ribs; a few small,
low-contrast lesions in the liver; air (-1000 HU) outside. Every shape is a perturbed ellipse
whose centre and size vary smoothly along the slice axis, so consecutive slices are coherent and
organs grow and shrink along z. Everything is vectorised over the whole volume (well under a
second for 32 x 128 x 128).

Array convention (the one of :mod:`bundle.data.volume_io`): ``hu[slice, row, col]``; slices go
from inferior (0) to superior, rows from anterior (0) to posterior, columns from the patient's
right (0) to left, i.e. a supine patient seen in the usual radiological display.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = ["HU", "LABELS", "QA_INSERTS", "Phantom", "flat_region", "make_phantom", "make_qa_phantom", "water_cylinder"]

# Nominal HU per tissue; each patient draws small offsets around them.
HU = {
    "air": -1000.0,
    "lung": -850.0,
    "fat": -100.0,
    "muscle": 40.0,
    "mediastinum": 35.0,
    "heart": 40.0,
    "liver": 60.0,
    "spleen": 45.0,
    "kidney": 30.0,
    "renal_sinus": -40.0,
    "vessel": 40.0,
    "bowel": 25.0,
    "bowel_gas": -900.0,
    "cancellous": 250.0,
    "cortical": 1100.0,
    "disc": 80.0,
    "csf": 15.0,
    "lung_vessel": 40.0,
}

# Label map values (uint8), to locate tissues, e.g. a flat region to measure noise in.
LABELS = {
    "air": 0,
    "fat": 1,
    "muscle": 2,
    "lung": 3,
    "mediastinum": 4,
    "heart": 5,
    "liver": 6,
    "spleen": 7,
    "kidney": 8,
    "vessel": 9,
    "bowel": 10,
    "bone": 11,
    "lesion": 12,
    "csf": 13,
    "water": 14,  # the QA phantom's body
    "insert": 15,  # the QA phantom's material inserts
}


@dataclass
class Phantom:
    """A synthetic volume.

    Attributes:
        hu: HU, float32 (slices, rows, cols).
        labels: uint8 tissue labels (:data:`LABELS`), same shape.
        spacing: (slice_mm, row_mm, col_mm).
        lesions: one dict per lesion or low-contrast disc: centre (slice, row, col) in voxels,
            radius_mm, contrast_hu (against its surroundings).
        inserts: one dict per material insert of a QA phantom: name, centre (row, col) in
            voxels (a cylinder through every slice), radius_mm, hu (nominal). Empty for patients.
    """

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    lesions: list[dict]
    inserts: list[dict] = field(default_factory=list)


def _smooth_along_z(
    rng: np.random.Generator, z_mm: np.ndarray, amplitude: float, period_mm: float = 120.0
) -> np.ndarray:
    """A smooth random curve of z (two sinusoids with random phases), shape (slices, 1, 1)."""
    phases = rng.uniform(0, 2 * np.pi, size=2)
    curve = 0.7 * np.sin(2 * np.pi * z_mm / period_mm + phases[0]) + 0.3 * np.sin(
        2 * np.pi * z_mm / (0.45 * period_mm) + phases[1]
    )
    return (amplitude * curve)[:, None, None]


def _wobble(rng: np.random.Generator, amplitude: float) -> list[tuple[int, float, float]]:
    """Random low harmonics (k, amplitude, phase) that make an ellipse irregular."""
    return [(k, rng.uniform(0, amplitude) / k**0.5, rng.uniform(0, 2 * np.pi)) for k in range(2, 6)]


def _ellipse_radius(x, y, cx, cy, ax, ay, wobble=(), angle: float = 0.0) -> np.ndarray:
    """Normalised radius of points (x, y) in a perturbed ellipse: < 1 inside, 1 on the outline.

    Centres and semi-axes (mm) broadcast against the grids, so they can vary per slice; a
    semi-axis of 0 makes the shape vanish in that slice.
    """
    dx, dy = x - cx, y - cy
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    u = dx / np.maximum(ax, 1e-6)
    v = dy / np.maximum(ay, 1e-6)
    rho = np.sqrt(u * u + v * v)
    if not wobble:
        return rho
    theta = np.arctan2(v, u)
    outline = 1.0
    for k, amp, phase in wobble:
        outline = outline + amp * np.cos(k * theta + phase)
    return rho / outline


def _extent(z_mm: np.ndarray, centre_mm: float, half_height_mm: float) -> np.ndarray:
    """Ellipsoid-like size profile along z: 1 at the centre, 0 beyond the half height."""
    t = (z_mm - centre_mm) / half_height_mm
    return np.sqrt(np.clip(1.0 - t * t, 0.0, None))[:, None, None]


def _smooth_field(rng: np.random.Generator, shape, sigma_mm, spacing) -> np.ndarray:
    """Gaussian random field with unit standard deviation (float32); correlation length in mm."""
    sigma_vox = [s / d for s, d in zip(sigma_mm, spacing)]
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def make_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] = (32, 128, 128),
    spacing: tuple[float, float, float] = (2.5, 2.7, 2.7),
    num_lesions: tuple[int, int] = (2, 5),
) -> Phantom:
    """A random thoraco-abdominal CT volume.

    Args:
        seed: patient; different seeds give different anatomy, lesions and texture.
        shape: (slices, rows, cols).
        spacing: (slice_mm, row_mm, col_mm); the body is sized in mm (about 300 x 220 mm) and
            shrunk to fit a smaller field of view, so it never touches the image edge.
        num_lesions: inclusive range of the number of liver lesions.
    """
    rng = np.random.default_rng(seed)
    slices, rows, cols = (int(s) for s in shape)
    dz, dy, dx = (float(s) for s in spacing)
    z = (np.arange(slices) - (slices - 1) / 2) * dz  # mm, 0 at the volume's centre
    y = ((np.arange(rows) - (rows - 1) / 2) * dy)[None, :, None]  # + posterior
    x = ((np.arange(cols) - (cols - 1) / 2) * dx)[None, None, :]  # + patient's left
    z_span = max(slices * dz, 1.0)
    full = (slices, rows, cols)

    hu = np.full(full, HU["air"], dtype=np.float32)
    labels = np.zeros(full, dtype=np.uint8)

    def paint(mask, value, label):
        np.copyto(hu, np.asarray(value, dtype=np.float32), where=mask)
        labels[mask] = LABELS[label]

    offset = {name: rng.normal(0, 4) for name in ("liver", "spleen", "kidney", "muscle", "fat", "heart")}

    # Body: fat, then the muscle wall, then the body cavity; all share one irregular outline.
    body_a = rng.uniform(140, 165) * (1 + _smooth_along_z(rng, z, 0.03))
    body_b = rng.uniform(95, 120) * (1 + _smooth_along_z(rng, z, 0.03))
    body_cy = rng.uniform(-8, 8) + _smooth_along_z(rng, z, 3)
    body_cx = rng.uniform(-6, 6) + _smooth_along_z(rng, z, 2)
    outline = _wobble(rng, 0.06)
    # Keep the whole body inside the field of view (a 2% margin), shrinking it if the FOV is small.
    reach = 1 + sum(amp for _, amp, _ in outline)
    half_fov_x, half_fov_y = 0.98 * cols * dx / 2, 0.98 * rows * dy / 2
    shrink = min(
        1.0,
        float(np.min((half_fov_x - np.abs(body_cx)) / (reach * body_a))),
        float(np.min((half_fov_y - np.abs(body_cy)) / (reach * body_b))),
    )
    body_a, body_b = shrink * body_a, shrink * body_b
    fat_mm = rng.uniform(8, 28) + _smooth_along_z(rng, z, 3)
    wall_mm = rng.uniform(8, 14)
    body = _ellipse_radius(x, y, body_cx, body_cy, body_a, body_b, outline) < 1
    paint(body, HU["fat"] + offset["fat"], "fat")
    wall_a, wall_b = body_a - fat_mm, body_b - fat_mm
    in_wall = _ellipse_radius(x, y, body_cx, body_cy, wall_a, wall_b, outline) < 1
    paint(in_wall, HU["muscle"] + offset["muscle"], "muscle")
    cav_a, cav_b = wall_a - wall_mm, wall_b - wall_mm
    cavity = _ellipse_radius(x, y, body_cx, body_cy + 0.08 * cav_b, cav_a, 0.92 * cav_b, outline) < 1

    # Diaphragm: lungs above, abdomen below; its height differs per patient. It is a dome,
    # higher in the middle than at the sides and lowest in the posterior recesses, so the
    # boundary is a curve in every slice.
    diaphragm_mm = rng.uniform(-0.25, 0.35) * z_span
    lateral = (x - body_cx) / cav_a
    posterior = (y - body_cy) / cav_b
    dome = diaphragm_mm + 10 - 25 * lateral**2 - 15 * posterior
    above = z[:, None, None] > dome

    # Abdomen: visceral fat with bowel loops (and a little gas) in the cavity.
    bowel_field = _smooth_field(rng, full, (2.5, 8.0, 8.0), spacing)
    abdomen = cavity & ~above
    paint(abdomen, HU["fat"] + 20 + offset["fat"], "fat")
    paint(abdomen & (bowel_field > 0.3), HU["bowel"], "bowel")
    paint(abdomen & (bowel_field > 2.3), HU["bowel_gas"], "bowel")

    # Thorax: mediastinum, heart, lungs with texture and vessels.
    thorax = cavity & above
    paint(thorax, HU["mediastinum"], "mediastinum")
    lung_growth = np.clip((z - diaphragm_mm + 30) / 50, 0, 1)[:, None, None]
    lung_a, lung_b = 0.42 * cav_a * (0.6 + 0.4 * lung_growth), 0.78 * cav_b * (0.7 + 0.3 * lung_growth)
    lungs = np.zeros(full, dtype=bool)
    for side in (-1, 1):
        cx = body_cx + side * (0.5 * cav_a + rng.uniform(-5, 5))
        cy = body_cy + 0.08 * cav_b + rng.uniform(-5, 5)
        lungs |= _ellipse_radius(x, y, cx, cy, lung_a, lung_b, _wobble(rng, 0.08)) < 1
    lungs &= thorax
    # The heart rests on the diaphragm: it is not cut by the dome but ends a little below it.
    heart_a = rng.uniform(45, 60) * _extent(z, diaphragm_mm + rng.uniform(40, 60), rng.uniform(50, 60))
    heart = (
        _ellipse_radius(
            x, y, body_cx + rng.uniform(10, 30), body_cy - 0.25 * cav_b, heart_a, 0.8 * heart_a,
            _wobble(rng, 0.05), 0.5,
        ) < 1
    ) & cavity
    lungs &= ~heart
    lung_texture = _smooth_field(rng, full, (2.5, 4.0, 4.0), spacing)
    vessel_a = _smooth_field(rng, full, (4.0, 7.0, 7.0), spacing)
    vessel_b = _smooth_field(rng, full, (4.0, 7.0, 7.0), spacing)
    paint(lungs, HU["lung"] + 25 * lung_texture, "lung")
    # Vessels: where two random fields both cross zero, i.e. along random curves in 3D.
    vessels = lungs & (np.abs(vessel_a) < 0.2) & (np.abs(vessel_b) < 0.2)
    paint(vessels, HU["lung_vessel"], "vessel")
    paint(heart, HU["heart"] + offset["heart"], "heart")

    # Abdominal organs; each one's z extent is drawn per patient, so some are cut by the volume.
    liver_centre = diaphragm_mm - rng.uniform(40, 70)
    liver_scale = _extent(z, liver_centre, rng.uniform(80, 110))
    liver_cx = body_cx - 0.38 * cav_a + rng.uniform(-8, 8)
    liver_cy = body_cy - 0.05 * cav_b + rng.uniform(-8, 8)
    liver_ax, liver_ay = 0.55 * cav_a * liver_scale, 0.72 * cav_b * liver_scale
    liver_radius = _ellipse_radius(
        x, y, liver_cx, liver_cy, liver_ax, liver_ay, _wobble(rng, 0.1), rng.uniform(-0.3, 0.1)
    )
    liver = (liver_radius < 1) & cavity & ~above & ~heart
    paint(liver, HU["liver"] + offset["liver"], "liver")

    spleen_scale = _extent(z, diaphragm_mm - rng.uniform(20, 50), rng.uniform(40, 60))
    spleen = (
        _ellipse_radius(
            x, y, body_cx + 0.6 * cav_a, body_cy + 0.35 * cav_b, 0.22 * cav_a * spleen_scale,
            0.3 * cav_b * spleen_scale, _wobble(rng, 0.1), rng.uniform(-0.6, -0.2),
        ) < 1
    ) & cavity & ~above
    paint(spleen, HU["spleen"] + offset["spleen"], "spleen")

    spine_cx = body_cx + rng.uniform(-3, 3)
    spine_cy = body_cy + cav_b * 0.62
    kidney_centre = diaphragm_mm - rng.uniform(50, 80)
    for side in (-1, 1):
        scale = _extent(z, kidney_centre + rng.uniform(-10, 10), rng.uniform(50, 60))
        kx, ky = spine_cx + side * rng.uniform(55, 70), spine_cy - rng.uniform(0, 12)
        kidney_radius = _ellipse_radius(x, y, kx, ky, 26 * scale, 33 * scale, _wobble(rng, 0.05), side * 0.5)
        kidney = (kidney_radius < 1) & cavity & ~above
        paint(kidney, HU["kidney"] + offset["kidney"], "kidney")
        paint(kidney & (kidney_radius < 0.45) & (x * side < kx * side), HU["renal_sinus"], "fat")

    # Great vessels, just anterior to the spine, all along z.
    aorta = np.hypot(x - (spine_cx + 18), y - (spine_cy - 30)) < rng.uniform(10, 13)
    cava = np.hypot(x - (spine_cx - 25), y - (spine_cy - 28)) < rng.uniform(9, 12)
    paint((aorta | cava) & cavity, HU["vessel"], "vessel")

    # Spine: vertebral bodies (cortical rim, cancellous core) separated by discs; posterior arch.
    vertebra_period = rng.uniform(28, 34)
    in_disc = (np.mod(z - rng.uniform(0, vertebra_period), vertebra_period) < 6)[:, None, None]
    vb_radius = _ellipse_radius(x, y, spine_cx, spine_cy, rng.uniform(17, 22), rng.uniform(15, 19))
    vertebral_body = vb_radius < 1
    paint(vertebral_body, np.where(in_disc, HU["disc"], HU["cancellous"] + 50 * rng.standard_normal()), "bone")
    paint(vertebral_body & (vb_radius > 0.84) & ~in_disc, HU["cortical"], "bone")
    canal_cy = spine_cy + 30
    canal_r = np.hypot(x - spine_cx, y - canal_cy)
    paint((canal_r < 14) & (canal_r >= 8) & ~in_disc, HU["cortical"] - 300, "bone")
    spinous = (_ellipse_radius(x, y, spine_cx, canal_cy + 18, 5, 12) < 1) & in_wall
    paint(spinous & ~in_disc, HU["cortical"] - 400, "bone")
    paint((canal_r < 8) & in_wall, HU["csf"], "csf")

    # Ribs: oval cross sections just inside the muscle wall, each present in a band of slices
    # and drifting round the body along z (ribs run obliquely).
    rib_period = rng.uniform(24, 32)
    rib_top = diaphragm_mm + 40
    rib_angles = np.array([-150, -125, -100, -80, -55, -30, 30, 55, 125, 150], dtype=float)
    for angle0 in np.deg2rad(rib_angles + rng.uniform(-8, 8, rib_angles.size)):
        angle = (angle0 + np.deg2rad(0.5) * (z - diaphragm_mm))[:, None, None]
        band = np.cos(2 * np.pi * (z - rng.uniform(0, rib_period)) / rib_period) > 0.2
        band &= z < rib_top
        rcx = body_cx + (wall_a - 0.5 * wall_mm) * np.cos(angle)
        rcy = body_cy + (wall_b - 0.5 * wall_mm) * np.sin(angle)
        rib_radius = _ellipse_radius(x, y, rcx, rcy, 9.0, 5.0, (), float(angle0) + np.pi / 2)
        rib = (rib_radius < 1) & band[:, None, None]
        paint(rib, HU["cancellous"] + 150, "bone")
        paint(rib & (rib_radius > 0.6), HU["cortical"] - 100, "bone")

    # Liver lesions: small spheres, hypo- or hyperdense by 5-20 HU.
    lesions = []
    liver_slices = np.flatnonzero(liver.any(axis=(1, 2)))
    if liver_slices.size:
        for _ in range(int(rng.integers(num_lesions[0], num_lesions[1] + 1))):
            k = int(rng.choice(liver_slices))
            candidates = np.argwhere(liver[k] & (liver_radius[k] < 0.6))
            if not len(candidates):
                continue
            r, c = candidates[rng.integers(len(candidates))]
            radius = float(rng.uniform(2.5, 10))
            contrast = float(rng.choice([-1, 1]) * rng.uniform(5, 20))
            distance = np.sqrt(((z - z[k]) ** 2)[:, None, None] + (y - y[0, r, 0]) ** 2 + (x - x[0, 0, c]) ** 2)
            # the liver as it stands now: kidneys, vessels and bone painted after it took parts of its ellipse
            sphere = (distance < radius) & (labels == LABELS["liver"])
            hu[sphere] += np.float32(contrast)
            labels[sphere] = LABELS["lesion"]
            lesions.append({"centre": (k, int(r), int(c)), "radius_mm": radius, "contrast_hu": contrast})

    # Gentle parenchymal texture (a few HU) in solid organs and muscle, then the scanner's
    # blur, so edges are not one-voxel steps.
    solid = np.isin(labels, [LABELS[n] for n in ("muscle", "liver", "spleen", "kidney", "heart", "lesion")])
    hu[solid] += 2.0 * _smooth_field(rng, full, (2.5, 10.0, 10.0), spacing)[solid]
    hu = ndimage.gaussian_filter(hu, (0.4, 0.6, 0.6), mode="nearest")
    return Phantom(hu=hu.astype(np.float32), labels=labels, spacing=(dz, dy, dx), lesions=lesions)


# The QA phantom's material inserts: name -> (nominal HU, angle on the ring in degrees); radius 10 mm.
QA_INSERTS = {
    "air": (-1000.0, 90.0),
    "fat": (-100.0, 150.0),
    "water": (0.0, 210.0),
    "soft tissue": (60.0, 270.0),
    "bone 700": (700.0, 330.0),
    "bone 1200": (1200.0, 30.0),
}
# Low-contrast discs (cylinders through every slice): (contrast HU, radius mm) on an inner ring.
QA_DISCS = [(15.0, 5.0), (10.0, 5.0), (5.0, 5.0), (15.0, 3.0), (10.0, 3.0), (5.0, 3.0), (15.0, 1.5), (10.0, 1.5)]


def make_qa_phantom(
    shape: tuple[int, int, int] = (32, 128, 128),
    spacing: tuple[float, float, float] = (2.5, 2.7, 2.7),
    diameter_mm: float = 220.0,
    seed: int | None = None,
) -> Phantom:
    """An ACR/Catphan-like QA cylinder: a water cylinder in air (the axis along the slices) with
    six material inserts (air, fat, water, soft tissue, bone-like 700 and 1200 HU, 10 mm radius)
    on an outer ring, whose edges serve the TTF, and low-contrast discs of 5-15 HU at radii of
    1.5-5 mm on an inner ring. Blurred like the patients (the scanner's blur).

    ``seed=None`` gives the one deterministic test phantom. A seed draws a variant of the same
    kind, for training and validation (uniform regions are rare in patients, and a model that has
    seen none fails on the QA phantom): an elliptical body of 160-300 mm (drawn: ``diameter_mm``
    applies to the test phantom only; aspect 0.75-1) at
    -5..45 HU, the ring rotated at random, insert HU within 10 % (at least 10 HU) of nominal, the
    disc contrasts shuffled and scaled by 0.8-1.5.
    """
    slices, rows, cols = (int(v) for v in shape)
    dz, dy, dx = (float(v) for v in spacing)
    y = ((np.arange(rows) - (rows - 1) / 2) * dy)[:, None]
    x = ((np.arange(cols) - (cols - 1) / 2) * dx)[None, :]
    limit_mm = 0.45 * min(rows * dy, cols * dx)
    insert_hu = {name: value for name, (value, _) in QA_INSERTS.items()}
    discs, rotation, aspect, body_hu = list(QA_DISCS), 0.0, 1.0, 0.0
    if seed is not None:
        rng = np.random.default_rng(seed)
        diameter_mm = float(rng.uniform(160.0, 300.0))
        aspect = float(rng.uniform(0.75, 1.0))
        body_hu = float(rng.uniform(-5.0, 45.0))
        rotation = float(rng.uniform(0.0, 360.0))
        insert_hu = {name: max(HU["air"], value + float(rng.uniform(-1, 1)) * max(10.0, 0.1 * abs(value)))
                     for name, value in insert_hu.items()}  # nothing below air
        scale = rng.uniform(0.8, 1.5, size=len(discs))
        discs = [(float(c * s), r) for (c, _), s, (_, r) in zip(rng.permutation(discs), scale, discs)]
    radius_mm = min(diameter_mm / 2, limit_mm)
    semi_y = aspect * radius_mm  # the body's half-height; half-width = radius_mm
    hu2d = np.full((rows, cols), HU["air"], np.float32)
    labels2d = np.zeros((rows, cols), np.uint8)
    body = np.hypot(y / semi_y, x / radius_mm) < 1
    hu2d[body], labels2d[body] = body_hu, LABELS["water"]
    inserts, lesions = [], []
    ring = 0.62 * semi_y
    for name, (_, angle) in QA_INSERTS.items():
        theta = np.deg2rad(angle + rotation)
        cy, cx = ring * np.sin(theta), ring * np.cos(theta)
        disc = np.hypot(y - cy, x - cx) < 10.0
        hu2d[disc], labels2d[disc] = insert_hu[name], LABELS["insert"]
        centre = (float(cy / dy + (rows - 1) / 2), float(cx / dx + (cols - 1) / 2))
        inserts.append({"name": name, "centre": centre, "radius_mm": 10.0, "hu": insert_hu[name]})
    inner = 0.3 * semi_y
    for index, (contrast, r) in enumerate(discs):
        angle = 2 * np.pi * index / len(discs) + np.deg2rad(rotation)
        cy, cx = inner * np.sin(angle), inner * np.cos(angle)
        disc = np.hypot(y - cy, x - cx) < r
        hu2d[disc] += contrast
        labels2d[disc] = LABELS["lesion"]
        centre = (slices // 2, float(cy / dy + (rows - 1) / 2), float(cx / dx + (cols - 1) / 2))
        lesions.append({"centre": centre, "radius_mm": r, "contrast_hu": contrast, "through_slices": True})
    hu = ndimage.gaussian_filter(np.broadcast_to(hu2d, (slices, rows, cols)).astype(np.float32), (0.4, 0.6, 0.6),
                                 mode="nearest")
    labels = np.broadcast_to(labels2d, (slices, rows, cols)).copy()
    return Phantom(hu=hu.astype(np.float32), labels=labels, spacing=(dz, dy, dx), lesions=lesions, inserts=inserts)


def flat_region(phantom: Phantom, margin_px: int = 2) -> np.ndarray:
    """Mask of the liver away from its edges and lesions: where to measure noise (HU sigma).

    The liver parenchyma is flat but for a texture of about 2 HU. ``margin_px`` pixels in-plane
    are eroded from every edge, lesions included. Slices without liver are empty. For the QA
    phantom: its water body, inserts and discs left out.
    """
    size = 2 * margin_px + 1
    flat = LABELS["water"] if (phantom.labels == LABELS["water"]).any() else LABELS["liver"]
    return ndimage.binary_erosion(phantom.labels == flat, structure=np.ones((1, size, size), dtype=bool))


def water_cylinder(
    shape: tuple[int, int, int] = (4, 64, 64),
    pixel_mm: float = 2.7,
    radius_mm: float = 75.0,
    hu_inside: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A uniform cylinder along the slice axis in air, and a mask of its inner 60 % (flat region).

    Returns:
        ``(hu, flat_mask)``: float32 HU and bool, both (slices, rows, cols).
    """
    slices, rows, cols = shape
    y = (np.arange(rows) - (rows - 1) / 2)[:, None] * pixel_mm
    x = (np.arange(cols) - (cols - 1) / 2)[None, :] * pixel_mm
    radius = np.hypot(y, x)
    hu = np.where(radius < radius_mm, hu_inside, HU["air"]).astype(np.float32)
    flat = radius < 0.6 * radius_mm
    return np.broadcast_to(hu, shape).copy(), np.broadcast_to(flat, shape).copy()
