"""How much of a faint lesion's contrast a model passes through, by lesion size and contrast.

Spheres of one radius and one contrast are added to a validation volume's low-dose SOURCE only, in
soft tissue of the clean truth (30-90 HU, away from its edges), far enough apart not to touch; the
model enhances the source with and without them. The difference of the two outputs is the model's
response to the lesions alone (the noise is the same in both, so it mostly cancels), and its mean
over each sphere's core (60 % of the radius) over the contrast added is the transfer: 1 keeps the
lesion, 0 smooths it away. The `no_diffusion` output is used (the DDIM rows match it within 0.1 dB),
at each model's stored source band unless the ``--source-lowpass-*`` flags give one for all of
them. Baselines for the same spheres: RED-CNN files (``--redcnn``) and non-local means at given
``h`` factors (``--nlm``, the evaluation's filter).
Run from the bundle root, alone:

    python scripts/lesion_transfer.py --model runs/q8/edge50_s0/model.pt runs/q10/les50_s0/model.pt \\
        --datalist data/demo_qa/datalist.json --patient demo004

``--detectability HU`` adds each size's expected lesion d' (the evaluation's non-prewhitening observer:
a disc of the sphere's radius at the contrast passed, against the output's NPS in the volume's flat
regions without the spheres) and its ratio to the full-dose scan's, which passes every sphere whole
with its own NPS: the size from which the model's lesions are as detectable as at full dose. Its
last rows bound every method: the ideal observer's d' on the input over the slices a sphere crosses
(no processing raises it), against the full-dose scan's non-prewhitening d'.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage


def sphere_centres(tissue: np.ndarray, spacing, radius_mm: float, count: int, rng) -> list[tuple[int, int, int]]:
    """Up to ``count`` voxels of ``tissue`` at least 3 radii (and 15 mm) apart, in random order."""
    centres = []
    candidates = np.argwhere(tissue)
    gap = max(3 * radius_mm, 15.0)
    for index in rng.permutation(len(candidates)):
        point = candidates[index] * np.asarray(spacing)
        if all(np.linalg.norm(point - np.asarray(c) * spacing) >= gap for c in centres):
            centres.append(tuple(int(v) for v in candidates[index]))
            if len(centres) == count:
                break
    return centres


def methods(opts):
    """(row name, HU (1, S, H, W) tensor -> (S, H, W) array) for every model and baseline asked for."""
    from bundle.evaluation.baselines import NonLocalMeans
    from bundle.evaluation.redcnn import load_redcnn
    from bundle.inference import CTEnhancer
    from bundle.inference.band_arguments import source_band_settings

    band = source_band_settings(opts)
    for path in opts.model:
        enhancer = CTEnhancer.from_file(path, **band).eval()
        yield path, lambda x, e=enhancer: e.ceiling(x, x).reshape(x.shape)[0].numpy()
    for path in opts.redcnn:
        redcnn = load_redcnn(path).eval()
        yield f"RED-CNN {path}", lambda x, r=redcnn: r(x)[0].numpy()
    for factor in opts.nlm:
        nlm = NonLocalMeans(h_factor=factor)
        yield f"NLM h_factor {factor:g}", lambda x, f=nlm: f.enhance(x).hu.reshape(x.shape)[0].numpy()


def main() -> None:
    from monai.bundle import ConfigParser

    import bundle.data.datalist
    from bundle.data.lesions import distance_mm, sphere_profile
    from bundle.inference.band_arguments import add_source_band_arguments

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--model", nargs="+", default=[], help="model.pt files (their no_diffusion output)")
    args.add_argument("--redcnn", nargs="+", default=[], help="RED-CNN baseline files")
    args.add_argument("--nlm", type=float, nargs="+", default=[], help="non-local means h factors")
    args.add_argument("--datalist", default="data/demo_qa/datalist.json")
    args.add_argument("--split", default="validation")
    args.add_argument("--patient", default="demo004")
    args.add_argument("--radii", type=float, nargs="+", default=[2.5, 5.0, 10.0], help="mm")
    args.add_argument("--contrasts", type=float, nargs="+", default=[5.0, 10.0, 20.0], help="HU")
    args.add_argument("--count", type=int, default=10, help="spheres per volume")
    args.add_argument("--detectability", type=float, default=None, metavar="HU",
                      help="also each sphere size's expected lesion d' (non-prewhitening) at this contrast, "
                           "against the input's and the full-dose scan's (module docstring)")
    add_source_band_arguments(args)  # one band for every model file (the baselines have none)
    opts = args.parse_args()
    if not (opts.model or opts.redcnn or opts.nlm):
        args.error("nothing to measure: give --model, --redcnn or --nlm")
    torch.set_grad_enabled(False)
    parser = ConfigParser()
    parser.read_config("configs/common.yaml")
    items = [i for i in bundle.data.datalist.load_datalist(opts.datalist, opts.split) if i.get("patient") == opts.patient]
    if not items or "clean" not in items[0]:
        raise SystemExit(f"{opts.datalist}: no {opts.patient!r} with clean truth in its {opts.split!r} list")
    data = parser.get_parsed_content("val_transforms")(items[0])
    source = data["source"].as_tensor().float()
    clean = data["clean"].as_tensor().float()[0].numpy()
    spacing = tuple(float(v) for v in data["source"].pixdim)
    soft = (clean > 30) & (clean < 90)

    print(f"{opts.patient} ({opts.split}), {opts.count} spheres per run in the source only; transfer = output "
          f"response / contrast added, core 60 % of the radius\n")
    print("| model | radius (mm) | " + " | ".join(f"{c:g} HU" for c in opts.contrasts) + " |")
    print("|---|---|" + "---|" * len(opts.contrasts))
    spheres = {}  # radius -> (centres, their distance maps, the spheres' profile): the same for every method
    for radius in opts.radii:
        margin = int(np.ceil(radius / min(spacing[1:]))) + 3
        tissue = ndimage.binary_erosion(soft, np.ones((1, 2 * margin + 1, 2 * margin + 1), bool))
        edge_slices = int(np.ceil(radius / spacing[0]))  # whole spheres only: none cut by the volume's ends
        tissue[:edge_slices] = False
        tissue[-edge_slices:] = False
        centres = sphere_centres(tissue, spacing, radius, opts.count, np.random.default_rng(0))
        spheres[radius] = (centres, [distance_mm(clean.shape, c, spacing).numpy() for c in centres],
                           sum(sphere_profile(clean.shape, c, radius, spacing, min(spacing[1:])) for c in centres))
    detectability = []  # (method, radius, mean transfer, its output without spheres) for the second table
    for name, enhance in methods(opts):
        base = enhance(source)
        for radius, (centres, distances, shape) in spheres.items():
            cells, transfers = [], []
            for contrast in opts.contrasts:
                lesioned = source + contrast * shape[None]
                response = enhance(lesioned) - base
                transfer = [response[d < 0.6 * radius].mean() / contrast for d in distances]
                cells.append(f"{np.mean(transfer):.2f} +- {np.std(transfer):.2f}")
                transfers.append(np.mean(transfer))
            detectability.append((name, radius, float(np.mean(transfers)), base))
            print(f"| {name} | {radius:g} ({len(centres)} spheres) | " + " | ".join(cells) + " |", flush=True)
    if opts.detectability is not None:
        print_detectability(data, source, detectability, opts.radii, opts.detectability)


def print_detectability(data: dict, source: torch.Tensor, measured, radii, contrast: float) -> None:
    """Each size's expected NPW d' at ``contrast``: the transfer (mean over the contrasts and spheres)
    times the contrast, against each output's NPS without the spheres; the input and the full-dose
    scan pass a sphere whole (transfer 1). The realisation's noise in a measured contrast, which moves a
    single lesion's d' in the evaluation, is left out: what is compared is contrast kept and noise."""
    from bundle.evaluation.evaluate import as_pair, pair_physics
    from bundle.metrics import npw_detectability, pw_detectability

    physics = pair_physics(as_pair(data), [(-160.0, 240.0)])
    spectra = {"full-dose scan": physics.noise_spectrum(physics.target, full_dose=True),
               "input": physics.noise_spectrum(source.numpy())}
    full = {r: npw_detectability(spectra["full-dose scan"], r, contrast) for r in radii}
    print(f"\nexpected lesion d' (NPW, the evaluation's observer) of a {contrast:g} HU sphere; / full dose = "
          f"against the full-dose scan's\n")
    print("| image | radius (mm) | transfer | d' | d' / full dose |\n|---|---|---|---|---|")
    rows = [(name, r, 1.0, None) for name in spectra for r in radii] + measured
    nps_of = {}
    for name, radius, transfer, output in rows:
        if name not in nps_of:
            nps_of[name] = spectra[name] if name in spectra else physics.noise_spectrum(output)
        d = npw_detectability(nps_of[name], radius, contrast * abs(transfer))
        print(f"| {name} | {radius:g} | {transfer:.2f} | {d:.2f} | {d / full[radius]:.2f} |", flush=True)
    # the bound: the ideal observer on the input over every slice a sphere centred on a slice crosses
    # (the simulator draws each slice's noise independently); no processing of the input raises it
    slice_mm = physics.slice_mm
    for radius in radii:
        offsets = np.arange(-np.floor(radius / slice_mm), np.floor(radius / slice_mm) + 1) * slice_mm
        sections = np.sqrt(np.clip(radius**2 - offsets**2, 0.0, None))
        d = pw_detectability(spectra["input"], sections[sections > 0], contrast)
        print(f"| input, ideal observer over the slices (bound) | {radius:g} | 1.00 | {d:.2f} | "
              f"{d / full[radius]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
