"""dlexp/tasks/classification.py: seeding makes runs reproducible; val/acc_best is the running max of val/acc."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from conftest import FAKE_MLP, run, snapshot


def test_same_seed_gives_identical_weights_and_another_seed_differs(make_cfg):
    """Two build()+fit runs with seed 7 end bit-identical on CPU; seed 8 ends elsewhere."""
    common = [*FAKE_MLP, "trainer.max_epochs=2"]
    a, b, c = (snapshot(run(make_cfg, *common, f"seed={s}").task.net) for s in (7, 7, 8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layer1.0.weight"], c["layer1.0.weight"])


def test_val_acc_best_is_the_running_max_of_val_acc(make_cfg):
    """val/acc_best after every epoch is the max of val/acc so far, also after val/acc drops."""
    seen = []

    class Record(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            m = trainer.callback_metrics
            seen.append((float(m["val/acc"]), float(m["val/acc_best"])))

    parts = run(make_cfg, "dataset=digits", "model=mlp", "model.hidden=[16]", "optimizer=sgd", "optimizer.lr=0.5",
                "trainer.max_epochs=6", extra=(Record(),))
    accs = [a for a, _ in seen]
    assert len(seen) == 6
    assert any(b < a for a, b in zip(accs, accs[1:])), "val/acc never dropped: the test would not tell max from last"
    for i, (_, best) in enumerate(seen):
        assert best == pytest.approx(max(accs[: i + 1]))
    assert float(parts.trainer.callback_metrics["val/acc_best"]) == pytest.approx(max(accs))
    assert parts.task.val_acc_best == pytest.approx(max(accs))
