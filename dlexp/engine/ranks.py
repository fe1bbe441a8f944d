"""Which rank this process is when torchrun or srun started it; kept light (no torch, no Lightning) because
`dlexp train` and the sweep summaries ask before anything heavy is imported."""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile


def launcher_rank() -> int:
    """This process's global rank when torchrun or srun started it (as Lightning detects them), else 0."""
    if "GROUP_RANK" not in os.environ and "SLURM_NTASKS" not in os.environ:
        return 0  # neither launcher: no need to import Lightning (seconds) before Hydra even starts
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        return int(os.environ["RANK"])
    if SLURMEnvironment.detect():
        return int(os.environ["SLURM_PROCID"])
    return 0


def rank_overrides() -> list[str]:
    """For a rank > 0 of torchrun/srun: Hydra's run and sweep directories in a temp folder, removed at exit
    (rank 0 owns the real run directory; checkpoint paths come from rank 0 by broadcast)."""
    rank = launcher_rank()
    if rank == 0:
        return []
    scratch = tempfile.mkdtemp(prefix=f"dlexp-rank{rank}-")
    atexit.register(shutil.rmtree, scratch, True)
    return [f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}"]


def quiet_rank() -> None:
    """A rank > 0 of torchrun/srun logs warnings only, to the console (rank 0 writes train.log)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.WARNING)
