"""plain_loops.py's convnet loop as a bare Lightning module: what Lightning alone costs, with no dlexp in the way.

    python benchmarks/lightning_loop.py convnet SPEC.json

The same net, tensors, split, batch order (seed + epoch), seed and steps as plain_loops.convnet (and so as
`dlexp train`), in a minimal LightningModule run by a Trainer with no logger, progress bar, model summary or
checkpoint callback; one torch.save per epoch and the test, as the plain loop. overhead.py runs it as a third
side: its cost over the plain loop is Lightning's (imports and loop), dlexp's cost over it is dlexp's own.
"""
from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from common import stamp
from plain_loops import batches, kwargs, load_splits, normaliser


class Batches:
    """One split's normalised batches; training batches reshuffled each epoch from seed + epoch."""

    def __init__(self, module: "ConvNetModule", split: str, shuffle: bool, limit: int | None = None) -> None:
        self.module, self.split, self.shuffle, self.limit = module, split, shuffle, limit

    def __len__(self) -> int:
        n = math.ceil(len(self.module.splits[self.split][1]) / self.module.batch_size)
        return min(n, self.limit) if self.limit is not None else n

    def __iter__(self):
        m = self.module
        x, y = m.splits[self.split]
        seed = m.seed + m.current_epoch if self.shuffle else None
        for idx in batches(len(y), m.batch_size, seed, self.limit):
            yield m.normalise(x[idx]), y[idx]


class ConvNetModule(pl.LightningModule):
    """plain_loops.convnet's net, data and steps as a LightningModule: Lightning runs the loop, nothing else."""

    def __init__(self, spec: dict, out: Path) -> None:
        from dlexp.nets.classifiers import ConvNet

        super().__init__()
        ds = spec["dataset"]
        self.splits = load_splits(ds)
        self.net = ConvNet(**kwargs(spec["model"], ("init_from", "init_include", "init_exclude")))
        self.spec, self.out, self.seed, self.batch_size = spec, out, spec["seed"], ds["batch_size"]
        self.normalise = normaliser(ds)
        self.sums: dict[str, torch.Tensor] = {}
        self.first, self.seen = True, 0

    def train_dataloader(self) -> Batches:
        return Batches(self, "train", shuffle=True, limit=self.spec["limit_train_batches"])

    def val_dataloader(self) -> Batches:
        return Batches(self, "val", shuffle=False)

    def test_dataloader(self) -> Batches:
        return Batches(self, "test", shuffle=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), **kwargs(self.spec["optimizer"]))

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.first:
            self.first = False
            stamp("first_step")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen += len(y)
        return F.cross_entropy(self.net(x), y)

    def _evaluate(self, batch) -> None:
        """Add a batch's summed loss, correct predictions and size to the running sums."""
        x, y = batch
        logits = self.net(x)
        batch_sums = {"loss": F.cross_entropy(logits, y, reduction="sum"), "correct": (logits.argmax(1) == y).sum(),
                      "n": torch.tensor(len(y))}
        for key, value in batch_sums.items():
            self.sums[key] = self.sums.get(key, 0) + value

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch)

    def _means(self) -> tuple[float, float]:
        sums, self.sums = self.sums, {}
        return sums["loss"].item() / sums["n"].item(), sums["correct"].item() / sums["n"].item()

    def on_validation_epoch_end(self) -> None:
        loss, self.val_acc = self._means()
        print(f"epoch {self.current_epoch}: val/loss {loss:.4f}  val/acc {self.val_acc:.4f}")

    def on_train_epoch_end(self) -> None:
        torch.save({"net": self.net.state_dict(), "epoch": self.current_epoch}, self.out / "last.pt")
        stamp(f"epoch_end_{self.current_epoch}")

    def on_fit_end(self) -> None:
        stamp("fit_end")

    def on_test_epoch_end(self) -> None:
        self.test_loss, self.test_acc = self._means()


def main(argv: list[str]) -> None:
    task, spec_path = argv
    assert task == "convnet", "only the convnet has a Lightning reference"
    spec = json.loads(Path(spec_path).read_text())
    if spec["threads"] != "auto":  # as dlexp's run (threads=N in its overrides); auto: torch's default
        torch.set_num_threads(spec["threads"])
    random.seed(spec["seed"])  # as plain_loops.main: the net's initial weights come from this seed
    np.random.seed(spec["seed"])
    torch.manual_seed(spec["seed"])
    module = ConvNetModule(spec, Path(spec_path).parent)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=spec["epochs"], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(module)
    trainer.test(module, verbose=False)
    print("result " + json.dumps({"train_images": module.seen, "test/acc": module.test_acc,
                                  "test/loss": module.test_loss, "val/acc": module.val_acc}))


if __name__ == "__main__":
    main(sys.argv[1:])
