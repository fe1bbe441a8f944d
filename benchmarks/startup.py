"""Start-up: `dlexp --help`, `dlexp list`, and the time from `dlexp train` to its first training step.

    python benchmarks/startup.py            # ~1.5 min
    python benchmarks/startup.py --quick    # one run of each: checks the script works

Every time is the wall time of the installed console script, from just before the process starts.
The first training step is stamped by a probe callback (timing_probe.py) in a default `dlexp train`
(convnet on digits; full mode adds Fashion-MNIST). Where that time goes: an import ladder (fresh
processes importing torch, then torch._dynamo, which any optimizer imports, then Lightning, then
what `dlexp train` imports; each ends with os._exit, so interpreter teardown is not counted), the
probe's stamps, the config check timed on its own, and (full mode) `-X importtime` naming what
Lightning pulls in.
"""
from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from common import PROBE, child_env, dlexp_command, fashion_available, machine, median, parser, run, table, verdict

TARGETS = {"help": 0.5, "list": 1.0, "first_step": 5.0}  # issue 7, seconds
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1"]  # the run ends soon after its first step
LADDER = [  # (row, cumulative imports): each row costs its time minus the previous row's
    ("python + import torch", "import torch"),
    ("+ torch._dynamo (torch.optim imports it: any training script pays it)", "import torch, torch._dynamo"),
    ("+ pytorch_lightning (and torchmetrics, torchvision, scipy.signal, ... it imports)",
     "import torch, torch._dynamo, pytorch_lightning"),
    ("+ Hydra, OmegaConf, tensorboard and dlexp's own modules",
     "import torch, torch._dynamo, pytorch_lightning, hydra, dlexp.engine.execute, dlexp.tasks.classification, "
     "dlexp.data.datamodule, dlexp.callbacks.training, pytorch_lightning.loggers.tensorboard"),
]
INSIDE_LIGHTNING = ["torchvision", "scipy.signal", "matplotlib"]  # named in the -X importtime table


def ladder(work: Path, repeats: int) -> list[tuple[str, float]]:
    """(row, seconds it adds) for LADDER, medians of fresh processes."""
    rows, previous = [], 0.0
    for name, imports in LADDER:
        code = f"{imports}; import os; os._exit(0)"  # no teardown: that is not start-up
        seconds = median([run([sys.executable, "-c", code], cwd=work, env=child_env()).check(imports).wall_s
                          for _ in range(repeats)])
        rows.append((name, seconds - previous))
        previous = seconds
    return rows


def imported_by(stderr: str) -> list[list[object]]:
    """From `-X importtime` output: (module, cumulative s, the module that imported it) for INSIDE_LIGHTNING."""
    lines = []  # (cumulative us, name, depth); children are listed before their parent
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            lines.append((int(m.group(1)), m.group(3), len(m.group(2))))
    rows = []
    for module in INSIDE_LIGHTNING:
        i = next((i for i, (_, name, _) in enumerate(lines) if name == module), None)
        if i is not None:
            parent = next((name for _, name, depth in lines[i + 1:] if depth < lines[i][2]), "(top level)")
            rows.append([module, f"{lines[i][0] / 1e6:.2f}", parent])
    return rows


def check_time(work: Path) -> float:
    """Seconds of dlexp.config.checks.check_overrides([]) beyond imports: its second call in one process."""
    code = ("import time; from dlexp.config.checks import check_overrides; check_overrides([]); "
            "t = time.perf_counter(); check_overrides([]); print(time.perf_counter() - t)")
    return float(run([sys.executable, "-c", code], cwd=work, env=child_env()).check("check_overrides").stdout)


def main() -> None:
    args = parser(__doc__.splitlines()[0], repeats=5).parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    train_repeats = max(1, min(repeats, 3))
    dlexp, env = dlexp_command(), child_env()
    rows, lines, stamps = [], [], {}
    with tempfile.TemporaryDirectory(prefix="dlexp-bench-") as tmp:
        work = Path(tmp)
        for name, cmd in (("help", ["--help"]), ("list", ["list"])):
            wall = median([run([*dlexp, *cmd], cwd=work, env=env).check(f"dlexp {name}").wall_s
                           for _ in range(repeats)])
            rows.append([f"dlexp {' '.join(cmd)}", f"{wall:.3f}", f"<= {TARGETS[name]}", verdict(wall, TARGETS[name])])
            lines.append(f"ratio {name}: {wall / TARGETS[name]:.2f} of target ({wall:.3f} s)")
        for dataset in ["digits"] + ([] if args.quick or not fashion_available() else ["fashion_mnist"]):
            runs = [run([*dlexp, "train", f"dataset={dataset}", *TINY, PROBE], cwd=work, env=env)
                    .check(f"dlexp train dataset={dataset}") for _ in range(train_repeats)]
            stamps[dataset] = {k: median([r.stamps()[k] for r in runs]) for k in ("built", "fit_start", "first_step")}
            first = stamps[dataset]["first_step"]
            rows.append([f"dlexp train dataset={dataset}: first step", f"{first:.3f}", f"<= {TARGETS['first_step']}",
                         verdict(first, TARGETS["first_step"])])
            lines.append(f"ratio first_step ({dataset}): {first / TARGETS['first_step']:.2f} of target ({first:.3f} s)")
        imports = ladder(work, train_repeats)
        config_check = check_time(work) if not args.quick else None
        inside = [] if args.quick else imported_by(
            run([sys.executable, "-X", "importtime", "-m", "dlexp", "train", *TINY], cwd=work, env=env)
            .check("dlexp train under -X importtime").stderr)
    s = stamps["digits"]
    print(f"start-up ({machine()}; medians of {repeats}, train runs and imports: of {train_repeats})")
    print(table(["command", "seconds", "target", "verdict"], rows))
    built = s["built"] - sum(t for _, t in imports)
    breakdown = [[name, f"{t:.2f}"] for name, t in imports] + [
        ["config check, composition, data, net, task (the rest until the callbacks are built)", f"{built:.2f}"],
        ["  of which dlexp.config.checks.check_overrides (imports excluded)",
         f"{config_check:.2f}" if config_check is not None else "(full mode)"],
        ["callbacks built -> fit start (loggers, Trainer)", f"{s['fit_start'] - s['built']:.2f}"],
        ["fit start -> first step (Lightning's fit set-up)", f"{s['first_step'] - s['fit_start']:.2f}"],
        ["total: command -> first training step", f"{s['first_step']:.2f}"],
    ]
    print("\nwhere the time to the first step goes (dlexp train, digits)")
    print(table(["phase", "seconds"], breakdown))
    if inside:
        print("\nwhat Lightning imports (one run under -X importtime: cumulative seconds, nested)")
        print(table(["module", "seconds", "imported by"], inside))
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
