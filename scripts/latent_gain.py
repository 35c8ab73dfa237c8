"""What the latent adds, per dose: the ceiling, the source's own latent and the U-Net's sample.

For each volume of the datalist's test list (``--dose``, 0.25 by default) and of each
``test_dose<d>`` list, the model's output formula (fidelity path and residual as the model file
stores them) is decoded from three latents:

- ``ceiling``: the target's latent (what a perfect latent model would give);
- ``no_diffusion``: the source's own latent (the U-Net skipped);
- ``model``: one DDIM sample of the U-Net (``--steps``, ``--seed``), as ``ctv2v enhance`` runs it;
  one row per ``--strength`` (1: from pure noise; below 1: from the source's latent noised to that
  fraction of the schedule, SDEdit, so small strengths move ``model`` towards ``no_diffusion``).

Printed per dose (the key window's PSNR against the clean truth where the datalist has it, else
against the target): ``ceiling - no_diffusion`` (what a perfect latent would add),
``model - no_diffusion`` (what the U-Net adds), and the latent distances
``||z_model - z_target|| / ||z_source - z_target||`` (below 1: the U-Net moves the source's
latent towards the target's). Run from the bundle root:

    python scripts/latent_gain.py --model models/model.pt --datalist data/demo/datalist.json

The model was trained at one dose (the demo: 0.25); rows at other doses test it out of its
training distribution. Prints a markdown table (docs/quality.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def latent(enhancer, hu: torch.Tensor) -> torch.Tensor:
    """The VAE's scaled posterior mean of a ``(1, S, H, W)`` HU volume (as the sampler sees it)."""
    channels = enhancer.windows.to_channels(hu.unsqueeze(0))
    return enhancer.encode(channels) * enhancer.scale_factor


@torch.no_grad()
def measure(enhancer, source: torch.Tensor, target: torch.Tensor, truth: torch.Tensor, window, steps: int, seed: int,
            strengths=(1.0,)):
    """Per strength: key-window PSNR of ceiling / no_diffusion / model against ``truth`` and the latent
    distances (the two latents and the two fixed rows computed once for all strengths)."""
    from bundle.metrics import volume_metrics

    f = enhancer.vae_factor
    if source.shape[-1] % f or source.shape[-2] % f:
        raise ValueError(f"in-plane size {tuple(source.shape[-2:])} is not a multiple of the VAE factor {f}.")
    z_source, z_target = latent(enhancer, source), latent(enhancer, target)
    channels = enhancer.windows.to_channels(source.unsqueeze(0))

    def decoded(z: torch.Tensor) -> torch.Tensor:
        hu = enhancer.windows.to_hu(enhancer.decode(z / enhancer.scale_factor, channels))[0]
        if enhancer.residual:  # the model's output formula: source + (decoded - decoded source latent)
            hu = source + hu - enhancer.windows.to_hu(enhancer.decode(z_source / enhancer.scale_factor, channels))[0]
        return hu

    fixed = {name: volume_metrics(decoded(z), truth, window)["psnr"]
             for name, z in (("ceiling", z_target), ("no_diffusion", z_source))}
    fixed["input"] = volume_metrics(source, truth, window)["psnr"]
    base = float(torch.linalg.vector_norm(z_source - z_target))
    rows = []
    for strength in strengths:
        z_model = enhancer.sample_latent(z_source, steps, enhancer.eta, strength, seed)
        psnr = {**fixed, "model": volume_metrics(decoded(z_model), truth, window)["psnr"]}
        rows.append((psnr, float(torch.linalg.vector_norm(z_model - z_target)) / base,
                     base / float(torch.linalg.vector_norm(z_target))))
    return rows


def main() -> None:
    import bundle.data.datalist
    from bundle.inference import CTEnhancer
    from bundle.metrics import window_name
    from bundle.utils.precision import autocast
    from monai.bundle import ConfigParser

    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--model", default="models/model.pt")
    args.add_argument("--datalist", default="data/demo/datalist.json")
    args.add_argument("--dose", type=float, default=None,
                      help="the dose of the datalist's 'test' list (default: as its simulator recorded it, else 0.25)")
    args.add_argument("--steps", type=int, default=20)
    args.add_argument("--seed", type=int, default=0)
    args.add_argument("--strength", type=float, nargs="+", default=[1.0], help="SDEdit strengths, one row each")
    args.add_argument("--doses", type=float, nargs="+", default=None, help="only these doses (default: every list)")
    args.add_argument("--window", type=float, nargs=2, default=(-160.0, 240.0), help="the key window, HU")
    opts = args.parse_args()
    torch.set_grad_enabled(False)
    parser = ConfigParser()
    parser.read_config("configs/common.yaml")
    transform = parser.get_parsed_content("val_transforms")
    enhancer = CTEnhancer.from_file(opts.model).eval()
    dose = opts.dose if opts.dose is not None else bundle.data.datalist.recorded_dose(opts.datalist)
    lists = {dose: "test"}
    for key in json.loads(Path(opts.datalist).read_text()):
        if key.startswith("test_dose"):  # the test list keeps its own dose's point
            lists.setdefault(float(key[len("test_dose"):]), key)
    if opts.doses:
        missing = sorted(set(opts.doses) - set(lists))
        if missing:
            raise SystemExit(f"--doses {missing}: {opts.datalist} has test lists for doses {sorted(lists)} only.")
        lists = {dose: lists[dose] for dose in opts.doses}
    print(f"Key window {window_name(opts.window)} HU, model {opts.model}, DDIM {opts.steps} steps, seed {opts.seed}\n")
    print("| dose | volume | PSNR vs | strength | input | no_diffusion | model | ceiling | ceiling - no_diffusion "
          "| model - no_diffusion | ‖z_model - z_target‖ / ‖z_source - z_target‖ | ‖z_source - z_target‖ / ‖z_target‖ |")
    print("|" + "---|" * 12)
    for dose in sorted(lists, reverse=True):
        for item in bundle.data.datalist.load_datalist(opts.datalist, lists[dose]):
            data = transform(item)
            truth_key = "clean" if "clean" in data else "target"
            source, target, truth = (data[k].as_tensor().float() for k in ("source", "target", truth_key))
            name = item.get("patient", Path(str(item["source"])).name)
            with autocast(enhancer.scale_factor.device, enhancer.precision):  # as ctv2v enhance runs it
                rows = measure(enhancer, source, target, truth, opts.window, opts.steps, opts.seed, opts.strength)
            for strength, (psnr, z_ratio, z_rel) in zip(opts.strength, rows):
                print(
                    f"| {dose:g} | {name} | {truth_key} | {strength:g} | {psnr['input']:.2f} | {psnr['no_diffusion']:.2f} "
                    f"| {psnr['model']:.2f} | {psnr['ceiling']:.2f} | {psnr['ceiling'] - psnr['no_diffusion']:+.2f} "
                    f"| {psnr['model'] - psnr['no_diffusion']:+.2f} | {z_ratio:.3f} | {z_rel:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
