"""`dlexp sample RUN_DIR [n=64] [seed=0] [mode=grid|interpolate|latent_map|codes] [steps=8] [single=true] [out=DIR]`.

Draws images from a finished (or running) GAN or VAE run: its generator (the EMA copy when the run kept
one) or its decoder applied to N(0, I) noise. `mode=interpolate` walks in a straight line between two
random latent points, one strip of `steps` images per row. `mode=latent_map` decodes a steps x steps grid
over a 2-d latent space (at the N(0, 1) quantiles 5%..95%, the Keras book's VAE map). `mode=codes` plots the
2-d codes of the test images of any autoencoder (the notes' linear AE as PCA), coloured by class. A generator
of 1-D signals (the ECG GANs) writes line plots and a .npy of the signals; a character language model continues
a prompt at several temperatures (`temperature=0,0.5,1.0`, 0 greedy; `prompt=... length=400`).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlexp.commands import options, usage
from dlexp.data.datamodule import denormalize
from dlexp.engine.restore import load_datamodule, restore_net
from dlexp.engine.rundir import RunDir
from dlexp.errors import ConfigError
from dlexp.io import atomic_write_bytes, atomic_write_text
from dlexp.plots import pyplot, save_grid, signal_panels

MODES = ("grid", "interpolate", "latent_map", "codes")


def parse(args: list[str]) -> tuple[RunDir, Any]:
    """The run directory and the checked options (conf/sample.yaml)."""
    positional, opts = options.parse("sample", args)
    run = RunDir.existing(options.one_run_dir("sample", positional, usage.SAMPLE))
    if opts.mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got '{opts.mode}'")
    if opts.n < 1 or opts.steps < 2:
        raise ConfigError("n must be >= 1 and steps >= 2")
    return run, opts


def latents(net: Any, opts: Any) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(z, labels, images per row) for the chosen mode, drawn from `seed`."""
    g = torch.Generator().manual_seed(opts.seed)
    n, classes = opts.n, getattr(net, "num_classes", 0)
    if opts.mode == "grid":
        z = torch.randn(n, net.latent_dim, generator=g)
        labels = torch.arange(n) % classes if classes else None  # a conditional GAN: one class per column
        return z, labels, classes or 8
    if opts.mode == "latent_map":
        if net.latent_dim != 2:
            raise ConfigError(f"mode=latent_map needs a 2-d latent space; this run's has {net.latent_dim} dimensions")
        side = opts.steps
        q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, side))
        rows, cols = torch.meshgrid(q.flip(0), q, indexing="ij")  # z[1] up the rows, z[0] along the columns
        return torch.stack([cols.flatten(), rows.flatten()], dim=1), None, side
    rows, steps = max(1, n // opts.steps), opts.steps
    z0, z1 = torch.randn(rows, net.latent_dim, generator=g), torch.randn(rows, net.latent_dim, generator=g)
    t = torch.linspace(0, 1, steps).view(1, steps, 1)
    z = (z0.unsqueeze(1) * (1 - t) + z1.unsqueeze(1) * t).flatten(0, 1)  # (rows * steps, latent)
    labels = (torch.arange(rows) % classes).repeat_interleave(steps) if classes else None
    return z, labels, steps


def plot_codes(run: RunDir, out: Path) -> Path:
    """Scatter the 2-d codes of the run's test images (a VAE's posterior means), coloured by class."""
    plt = pyplot("mode=codes")
    config, datamodule, net = run.config(), load_datamodule(run), restore_net(run)
    if not hasattr(net, "encode"):
        raise ConfigError(f"{run.path} trained {type(net).__name__}, which has no encoder; mode=codes works on autoencoders")
    x, y = datamodule.splits["test"]
    with torch.no_grad():  # in chunks: a conv encoder's activations for 10,000 images would not fit
        codes = [net.encode(datamodule.transform(chunk, training=False)) for chunk in x.split(1000)]
    codes = torch.cat([c[0] if isinstance(c, tuple) else c for c in codes]).flatten(1)
    if codes.shape[1] != 2:
        raise ConfigError(f"mode=codes plots 2-d codes; this run's code has {codes.shape[1]} dimensions")
    fig, ax = plt.subplots(figsize=(5, 4.5))
    classes = config["dataset"]["num_classes"]
    if classes > 1:
        fig.colorbar(ax.scatter(codes[:, 0], codes[:, 1], c=y, cmap="tab10", s=6), ax=ax, label="class")
    else:
        ax.scatter(codes[:, 0], codes[:, 1], s=6)
    ax.set(xlabel="code 1", ylabel="code 2", title=f"{config['dataset']['name']} test set: 2-d codes")
    path = out / "codes.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def temperatures(opts: Any) -> list[float]:
    """temperature=0,0.5,1.0 (or one number): the softmax temperatures to sample at, 0 meaning greedy."""
    try:
        values = [float(t) for t in str(opts.temperature).split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"temperature expects numbers separated by commas, got '{opts.temperature}'") from None
    if not values or any(t < 0 for t in values):
        raise ConfigError(f"temperature expects numbers >= 0 (0: greedy), got '{opts.temperature}'")
    return values


def write_text(run: RunDir, opts: Any, out: Path) -> int:
    """A character language model continues a prompt at each temperature: printed and written to text_t*.txt."""
    dm, net = load_datamodule(run), restore_net(run)
    alphabet = dm.source.vocabulary()  # id i is alphabet[i]
    g = torch.Generator().manual_seed(opts.seed)
    if opts.prompt is None:  # the start of a random test window
        windows = dm.splits["test"][0]
        prompt_ids = windows[int(torch.randint(len(windows), (1,), generator=g))][:20]
    else:
        unknown = sorted(set(str(opts.prompt)) - set(alphabet))
        if unknown or not str(opts.prompt):
            raise ConfigError(f"prompt must be non-empty and use the corpus's characters; not in it: {unknown}")
        prompt_ids = torch.tensor([alphabet.index(c) for c in str(opts.prompt)])
    prompt = "".join(alphabet[i] for i in prompt_ids.tolist())
    for t in temperatures(opts):
        ids = net.generate(prompt_ids, opts.length, t, torch.Generator().manual_seed(opts.seed))
        text = prompt + "".join(alphabet[i] for i in ids.tolist())
        path = out / f"text_t{t:g}_seed{opts.seed}.txt"
        atomic_write_text(path, text + "\n")
        print(f"--- temperature {t:g}{' (greedy)' if t == 0 else ''}: {path}\n{text}\n")
    return 0


def write_signals(signals: torch.Tensor, out: Path, name: str) -> None:
    """Generated 1-D signals (B, C, L): line plots (PNG) and the values themselves (.npy, for analysis)."""
    save_grid(signal_panels(signals), out / f"{name}.png", nrow=4)
    buffer = io.BytesIO()
    np.save(buffer, signals.float().cpu().numpy())
    atomic_write_bytes(out / f"{name}.npy", buffer.getvalue())
    print(f"wrote {out / f'{name}.png'} and {out / f'{name}.npy'} ({tuple(signals.shape)})")


def main(args: list[str]) -> int:
    run, opts = parse(args)
    out = Path(opts.out) if opts.out else run.samples
    if opts.mode == "codes":
        print(f"wrote {plot_codes(run, out)}")
        return 0
    if hasattr(run.net_class(), "generate"):  # a language model
        return write_text(run, opts, out)
    if not hasattr(run.net_class(), "sample"):
        raise ConfigError(f"{run.path} trained {run.config()['model']['_target_']}, which has no generator or prior "
                          "to sample from; dlexp sample works on GAN and VAE runs")
    net = restore_net(run, ema=True)
    z, labels, nrow = latents(net, opts)
    with torch.no_grad():
        images = net.sample(z, labels)
    name = f"sample_{opts.mode}_n{len(images)}_seed{opts.seed}"
    if images.dim() == 3:  # 1-D signals (B, C, L)
        write_signals(images, out, name)
        return 0
    dataset = run.config()["dataset"]
    images = denormalize(images, torch.tensor(dataset["mean"]).view(1, -1, 1, 1),
                         torch.tensor(dataset["std"]).view(1, -1, 1, 1))
    save_grid(images, out / f"{name}.png", nrow)
    print(f"wrote {out / f'{name}.png'}")
    if opts.single:
        for i, image in enumerate(images):
            save_grid(image.unsqueeze(0), out / name / f"{i:04d}.png", 1)
        print(f"wrote {len(images)} images to {out / name}/")
    return 0
