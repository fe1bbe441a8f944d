"""`python -m dlexp.engine.ddp_worker`: one local rank > 0 of rank 0's DDP run (started by dlexp/engine/ddp.py).

It reads the job (resolved config, model name, checkpoint, TensorBoard purge step) on stdin, builds the same
objects as rank 0, says "ready" on stdout and runs the same fit and test. It writes no file.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import pytorch_lightning  # noqa: F401  (sets its loggers' levels on import: quieted in main)
from omegaconf import OmegaConf

from dlexp.callbacks.run_state import StopOnSignal
from dlexp.engine.build import build
from dlexp.engine.fit import fit_and_test
from dlexp.engine.rundir import RunDir
from dlexp.errors import RunInterrupted


def _watch_parent() -> None:
    """A worker ends when rank 0 is gone (killed, crashed), wherever it is blocked."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main() -> int:
    _watch_parent()
    job = json.loads(sys.stdin.buffer.read())
    ready = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the pipe to rank 0, for one line: "ready"
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything else the worker prints goes to stderr
    rank = os.environ["LOCAL_RANK"]
    warnings.simplefilter("ignore")  # rank 0 shows the same warnings, progress and skipped batches once
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    cfg = OmegaConf.create(job["config"])
    ckpt_path = Path(job["ckpt_path"]) if job["ckpt_path"] else None
    stopper = StopOnSignal(str(RunDir(Path(cfg.run_dir)).last_checkpoint))
    try:
        run = build(cfg, job["model"], extra_callbacks=[stopper], tensorboard_purge_step=job["purge_step"])
        ready.write("ready\n")
        ready.close()
        fit_and_test(run, ckpt_path, stopper)
    except RunInterrupted:
        return 0  # every rank stopped after the same batch; rank 0 wrote the checkpoint and reports it
    except Exception as e:
        print(f"error: DDP rank {rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a worker owns no file; skip the interpreter's teardown (seconds, with a process group)
