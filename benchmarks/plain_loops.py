"""Hand-written PyTorch loops doing the work of `dlexp train`: the reference overhead.py compares dlexp to.

    python benchmarks/plain_loops.py convnet SPEC.json
    python benchmarks/plain_loops.py wgan_gp SPEC.json

SPEC.json holds dlexp's composed config (model, dataset, optimizer, task, gan_loss sections, resolved),
seed, epochs and limit_train_batches; overhead.py writes it. No Lightning, no Hydra: the same nn.Module
classes from dlexp.nets built with the same arguments, the same uint8 tensors (dlexp's loaders), the same
validation split, batch order (seed + epoch), normalisation, optimizer, seed and number of steps, and the
same work around the steps (validation each epoch, a checkpoint per epoch, test; GANs: a sample grid).
Stamps (common.stamp) mark the first step and the end of fitting, as the probe does inside dlexp.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import stamp  # standard library only: this script imports no Lightning and no Hydra


def load_splits(dataset: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """train/val/test uint8 images and labels, split exactly as dlexp's ImageDataModule does."""
    from dlexp.data.sources import Digits, IdxDataset

    source = dict(dataset["source"])
    kind = source.pop("_target_").rsplit(".", 1)[-1]
    data = {"IdxDataset": IdxDataset, "Digits": Digits}[kind](**source)()
    perm = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(dataset["split_seed"]))
    n_val = int(len(perm) * dataset["val_fraction"])
    val, train = perm[:n_val], perm[n_val:]
    return {"train": (data.train_x[train], data.train_y[train]), "val": (data.train_x[val], data.train_y[val]),
            "test": (data.test_x, data.test_y)}


def batches(n: int, batch_size: int, shuffle_seed: int | None, limit: int | None):
    """Index batches: a permutation from seed + epoch (as dlexp's TensorBatches) or in order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed)) if shuffle_seed is not None \
        else torch.arange(n)
    for i, start in enumerate(range(0, n, batch_size)):
        if limit is not None and i >= limit:
            return
        yield order[start: start + batch_size]


def normaliser(dataset: dict):
    """uint8 (B, C, H, W) -> (x / 255 - mean) / std, as dlexp's datamodule transforms a batch."""
    mean, std = torch.tensor(dataset["mean"]).view(1, -1, 1, 1), torch.tensor(dataset["std"]).view(1, -1, 1, 1)
    return lambda x: (x.float().div_(255.0) - mean) / std


def kwargs(node: dict, drop: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in node.items() if k not in ("_target_", "_partial_", *drop)}


def convnet(spec: dict, out: Path) -> dict:
    from dlexp.nets.classifiers import ConvNet

    ds = spec["dataset"]
    assert spec["model"]["_target_"] == "dlexp.nets.classifiers.ConvNet", spec["model"]["_target_"]
    splits = load_splits(ds)
    net = ConvNet(**kwargs(spec["model"], ("init_from", "init_include", "init_exclude")))
    opt = torch.optim.Adam(net.parameters(), **kwargs(spec["optimizer"]))
    normalise = normaliser(ds)

    def evaluate(split: str) -> tuple[float, float]:
        x, y = splits[split]
        net.eval()
        loss, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        with torch.no_grad():
            for idx in batches(len(y), ds["batch_size"], None, None):
                logits = net(normalise(x[idx]))
                loss += F.cross_entropy(logits, y[idx], reduction="sum")
                correct += (logits.argmax(1) == y[idx]).sum()
        return loss.item() / len(y), correct.item() / len(y)

    x, y = splits["train"]
    stamp("first_step")
    for epoch in range(spec["epochs"]):
        net.train()
        loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
        for idx in batches(len(y), ds["batch_size"], spec["seed"] + epoch, spec["limit_train_batches"]):
            xb, yb = normalise(x[idx]), y[idx]
            logits = net(xb)  # (B, classes)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
        val_loss, val_acc = evaluate("val")
        print(f"epoch {epoch}: train/loss {loss_sum.item() / seen:.4f}  train/acc {correct.item() / seen:.4f}  "
              f"val/loss {val_loss:.4f}  val/acc {val_acc:.4f}")
        torch.save({"net": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}, out / "last.pt")
        stamp(f"epoch_end_{epoch}")
    stamp("fit_end")
    test_loss, test_acc = evaluate("test")
    return {"train_images": seen * spec["epochs"], "test/acc": test_acc, "test/loss": test_loss, "val/acc": val_acc}


def wgan_gp(spec: dict, out: Path) -> dict:
    from torchvision.utils import save_image

    from dlexp.nets.gans import GAN, DCGANDiscriminator, DCGANGenerator

    ds, model = spec["dataset"], spec["model"]
    assert model["generator"]["_target_"].endswith("DCGANGenerator"), model["generator"]["_target_"]
    splits = load_splits(ds)
    net = GAN(DCGANGenerator(**kwargs(model["generator"])), DCGANDiscriminator(**kwargs(model["discriminator"])))
    G, D = net.generator, net.discriminator
    opt_g = torch.optim.Adam(G.parameters(), **kwargs(spec["optimizer"]))
    opt_d = torch.optim.Adam(D.parameters(), **kwargs(spec["optimizer"]))
    n_critic, gp_weight, latent = spec["task"]["n_critic"], spec["gan_loss"]["gp_weight"], G.latent_dim
    mean, std = torch.tensor(ds["mean"]).view(1, -1, 1, 1), torch.tensor(ds["std"]).view(1, -1, 1, 1)
    fixed_noise = torch.randn(64, latent, generator=torch.Generator().manual_seed(spec["seed"]))
    torch.randn(4, latent)  # dlexp draws one batch of noise to check G's output shape: keep the RNG streams equal

    x, _ = splits["train"]
    stamp("first_step")
    for epoch in range(spec["epochs"]):
        d_losses, seen = [], 0
        for i, idx in enumerate(batches(len(x), ds["batch_size"], spec["seed"] + epoch, spec["limit_train_batches"])):
            real = (x[idx].float().div_(255.0) - mean) / std  # (B, C, H, W) in [-1, 1]
            z = torch.randn(real.shape[0], latent)
            with torch.no_grad():
                fake = G(z)
            # critic: E[D(G(z))] - E[D(x)] + lambda * (||grad D(x_hat)|| - 1)^2
            d_real, d_fake = D(real), D(fake)
            alpha = torch.rand(real.shape[0], 1, 1, 1)
            x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
            gp = (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()
            d_loss = d_fake.mean() - d_real.mean() + gp_weight * gp
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            d_losses.append(d_loss.detach())
            seen += real.shape[0]
            if (i + 1) % n_critic == 0:  # generator: every n_critic critic steps
                D.requires_grad_(False)
                g_loss = -D(G(torch.randn(real.shape[0], latent))).mean()
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                D.requires_grad_(True)
        print(f"epoch {epoch}: train/d_loss {torch.stack(d_losses).mean().item():.4f}")
        torch.save({"net": net.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()}, out / "last.pt")
        stamp(f"epoch_end_{epoch}")
    G.eval()
    with torch.no_grad():
        save_image((G(fixed_noise) * std + mean).clamp(0, 1), out / "samples.png", nrow=8)
    stamp("fit_end")
    return {"train_images": seen * spec["epochs"],
            "train/d_loss": torch.stack(d_losses).mean().item()}


def main(argv: list[str]) -> None:
    task, spec_path = argv
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec_path).parent
    if spec["threads"] != "auto":  # as dlexp's run (threads=N in its overrides); auto: torch's default
        torch.set_num_threads(spec["threads"])
    random.seed(spec["seed"])  # what Lightning's seed_everything seeds
    np.random.seed(spec["seed"])
    torch.manual_seed(spec["seed"])
    result = {"convnet": convnet, "wgan_gp": wgan_gp}[task](spec, out)
    print("result " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
