"""`dlexp sample RUN_DIR [n=64] [seed=0] [mode=grid|interpolate] [steps=8] [single=true] [out=DIR]`.

Draws images from a finished (or running) GAN or VAE run: its generator (the EMA copy when the run kept
one) or its decoder applied to N(0, I) noise. `mode=interpolate` walks in a straight line between two
random latent points, one strip of `steps` images per row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dlexp.config import ConfigError

USAGE = "usage: dlexp sample RUN_DIR [n=64] [seed=0] [mode=grid|interpolate] [steps=8] [single=true] [out=DIR]"
DEFAULTS: dict[str, Any] = {"n": 64, "seed": 0, "mode": "grid", "steps": 8, "single": False, "out": None}


def parse(args: list[str]) -> tuple[Path, dict[str, Any]]:
    """RUN_DIR and key=value options, checked: one line naming the problem otherwise."""
    if not args or "=" in args[0]:
        raise ConfigError(f"missing RUN_DIR; {USAGE}")
    run_dir, options = Path(args[0]), dict(DEFAULTS)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a dlexp run directory (no config.yaml)")
    for arg in args[1:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in DEFAULTS:
            raise ConfigError(f"unknown option '{arg}'; options: {', '.join(f'{k}=' for k in DEFAULTS)}")
        try:
            options[key] = (value.lower() in ("1", "true", "yes") if key == "single"
                            else int(value) if key in ("n", "seed", "steps") else value)
        except ValueError:
            raise ConfigError(f"{key} expects an integer, got '{value}'") from None
    if options["mode"] not in ("grid", "interpolate"):
        raise ConfigError(f"mode must be grid or interpolate, got '{options['mode']}'")
    if options["n"] < 1 or options["steps"] < 2:
        raise ConfigError("n must be >= 1 and steps >= 2")
    return run_dir, options


def latents(net: Any, options: dict[str, Any]):
    """(z, labels, images per row) for the chosen mode, drawn from `seed`."""
    import torch

    g = torch.Generator().manual_seed(options["seed"])
    n, classes = options["n"], getattr(net, "num_classes", 0)
    if options["mode"] == "grid":
        z = torch.randn(n, net.latent_dim, generator=g)
        labels = torch.arange(n) % classes if classes else None  # a conditional GAN: one class per column
        return z, labels, classes or 8
    rows, steps = max(1, n // options["steps"]), options["steps"]
    z0, z1 = torch.randn(rows, net.latent_dim, generator=g), torch.randn(rows, net.latent_dim, generator=g)
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    z = (z0.unsqueeze(1) * (1 - t) + z1.unsqueeze(1) * t).flatten(0, 1)  # (rows * steps, latent)
    labels = (torch.arange(rows) % classes).repeat_interleave(steps) if classes else None
    return z, labels, steps


def main(args: list[str]) -> int:
    import torch
    import yaml

    from dlexp.callbacks.samples import denormalize, save_grid
    from dlexp.checkpoint import load_checkpoint
    from dlexp.train import net_from_config
    from dlexp.transfer import checkpoint_file

    run_dir, options = parse(args)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    net = net_from_config(config["model"])
    if not hasattr(net, "sample"):
        raise ConfigError(f"{run_dir} trained {type(net).__name__}, which has no generator or prior to sample from; "
                          "dlexp sample works on GAN and VAE runs")
    try:
        state = load_checkpoint(checkpoint_file(run_dir))["state_dict"]
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from None
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    ema = {k.removeprefix("generator_ema."): v for k, v in state.items() if k.startswith("generator_ema.")}
    if ema:
        net.generator.load_state_dict(ema)
    net.eval()
    z, labels, nrow = latents(net, options)
    with torch.no_grad():
        images = net.sample(z, labels)
    dataset = config["dataset"]
    images = denormalize(images, torch.tensor(dataset["mean"]).view(1, -1, 1, 1),
                         torch.tensor(dataset["std"]).view(1, -1, 1, 1))
    out = Path(options["out"]) if options["out"] else run_dir / "samples"
    name = f"sample_{options['mode']}_n{len(images)}_seed{options['seed']}"
    save_grid(images, out / f"{name}.png", nrow)
    print(f"wrote {out / f'{name}.png'}")
    if options["single"]:
        for i, image in enumerate(images):
            save_grid(image.unsqueeze(0), out / name / f"{i:04d}.png", 1)
        print(f"wrote {len(images)} images to {out / name}/")
    return 0
