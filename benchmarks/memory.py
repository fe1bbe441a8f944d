"""Memory: peak RSS of a `dlexp train dataset=fashion_mnist model=convnet` process, with references.

    python benchmarks/memory.py            # one Fashion-MNIST epoch (digits when absent), ~1 min
    python benchmarks/memory.py --quick    # digits, a few batches: checks the script works

Peak RSS (resident set, MB = 10^6 bytes) of each process comes from wait4 on that very process
(common.run). References put the number in context: a bare `import torch`, `import pytorch_lightning`,
and the hand-written loop of overhead.py doing the same training (plain_loops.py).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import HERE, child_env, dlexp_command, fashion_available, machine, parser, run, table, verdict
from overhead import write_spec

TARGET_MB = 1500.0  # issue 7: <= 1.5 GB


def main() -> None:
    args = parser(__doc__.splitlines()[0], repeats=1).parse_args()
    dataset = "digits" if args.quick or not fashion_available() else "fashion_mnist"
    overrides = [f"dataset={dataset}", "model=convnet", "trainer.max_epochs=1"]
    overrides += ["trainer.limit_train_batches=5", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"] \
        if args.quick else []
    env = child_env()
    with tempfile.TemporaryDirectory(prefix="dlexp-bench-") as tmp:
        work = Path(tmp)
        spec = write_spec(overrides, work)
        runs = {} if args.quick else {  # quick: only what could rot
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "python -c 'import pytorch_lightning'": [sys.executable, "-c", "import pytorch_lightning"],
        }
        runs["plain loop (benchmarks/plain_loops.py convnet)"] = [sys.executable, str(HERE / "plain_loops.py"),
                                                                  "convnet", str(spec)]
        runs[f"dlexp train {' '.join(overrides)}"] = [*dlexp_command(), "train", *overrides]
        results = {}
        for name, cmd in runs.items():
            results[name] = run(cmd, cwd=work, env=env).check(name)
            print(f"  {name}: {results[name].max_rss_mb:.0f} MB, {results[name].wall_s:.1f} s", file=sys.stderr,
                  flush=True)
    dlexp_name = list(runs)[-1]
    peak = results[dlexp_name].max_rss_mb
    rows = [[name, f"{r.max_rss_mb:.0f}", f"{r.wall_s:.1f}", f"<= {TARGET_MB:.0f}" if name == dlexp_name else "",
             verdict(peak, TARGET_MB) if name == dlexp_name else ""] for name, r in results.items()]
    print(f"memory: peak RSS per process ({machine()})")
    print(table(["process", "peak RSS MB", "wall s", "target", "verdict"], rows))
    print(f"ratio memory: {peak / TARGET_MB:.2f} of target ({peak:.0f} MB) {verdict(peak, TARGET_MB)}")


if __name__ == "__main__":
    main()
