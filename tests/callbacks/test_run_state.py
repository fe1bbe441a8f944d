"""dlexp/callbacks/run_state.py: LastCheckpoint keeps the final epoch's state."""
from __future__ import annotations

import torch

from conftest import FAKE_MLP, run


def test_last_checkpoint_holds_the_final_epoch(make_cfg, tmp_path):
    """checkpoints/last.ckpt is the state after the final epoch, even when that epoch did not improve the monitor."""
    run(make_cfg, *FAKE_MLP, "optimizer.lr=0", "callbacks=checkpoint", "trainer.max_epochs=2")  # val/acc stays put
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 6)
