"""Start-up: `dlexp --help`, `dlexp list`, and the time from `dlexp train` to its first training step.

    python benchmarks/startup.py            # ~1 min
    python benchmarks/startup.py --quick    # one run of each: checks the script works

Every time is the wall time of the installed console script, from just before the process starts.
The first training step is stamped by a probe callback (timing_probe.py) in a default `dlexp train`
(convnet on digits; full mode adds Fashion-MNIST). Where the time goes: one extra run under
`python -X importtime` splits import time by package (self time, so the rows add up), the probe
stamps the end of building (config, data, net, callbacks, trainer) and the start of fit, and
dlexp.config.check_overrides is timed on its own (the config check `dlexp train` runs before Hydra's).
"""
from __future__ import annotations

import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from common import PROBE, child_env, dlexp_command, fashion_available, machine, median, parser, run, table, verdict

TARGETS = {"help": 0.5, "list": 1.0, "first_step": 5.0}  # issue 7, seconds
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1"]  # the run ends soon after its first step
# import-time rows: a module counts for the first group whose prefix it has (Lightning's dependencies by name)
GROUPS = [("torch", ("torch",)), ("Lightning", ("pytorch_lightning", "lightning_fabric", "lightning_utilities")),
          ("torchmetrics (imported by Lightning)", ("torchmetrics",)),
          ("torchvision (imported by torchmetrics)", ("torchvision",)), ("scipy (imported by torchmetrics)", ("scipy",)),
          ("Hydra + OmegaConf", ("hydra", "omegaconf", "antlr4")), ("tensorboard", ("tensorboard", "tensorboardX")),
          ("numpy", ("numpy",)), ("dlexp", ("dlexp",))]


def import_times(stderr: str) -> dict[str, float]:
    """`-X importtime` self times (seconds) summed by GROUPS; the rest under 'other'."""
    totals: dict[str, float] = defaultdict(float)
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if not m:
            continue
        name = m.group(2)
        group = next((g for g, prefixes in GROUPS if name.split(".")[0] in prefixes), "other")
        totals[group] += int(m.group(1)) / 1e6
    return totals


def check_time(work: Path) -> float:
    """Seconds of dlexp.config.check_overrides([]) beyond imports: its second call in one process."""
    code = ("import time; from dlexp.config import check_overrides; check_overrides([]); "
            "t = time.perf_counter(); check_overrides([]); print(time.perf_counter() - t)")
    return float(run([sys.executable, "-c", code], cwd=work, env=child_env()).check("check_overrides").stdout)


def main() -> None:
    args = parser(__doc__.splitlines()[0], repeats=5).parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    dlexp, env = dlexp_command(), child_env()
    rows, lines = [], []
    with tempfile.TemporaryDirectory(prefix="dlexp-bench-") as tmp:
        work = Path(tmp)
        for name, cmd in (("help", ["--help"]), ("list", ["list"])):
            walls = [run([*dlexp, *cmd], cwd=work, env=env).check(f"dlexp {name}").wall_s for _ in range(repeats)]
            rows.append([f"dlexp {' '.join(cmd)}", f"{median(walls):.3f}", f"<= {TARGETS[name]}",
                         verdict(median(walls), TARGETS[name])])
            lines.append(f"ratio {name}: {median(walls) / TARGETS[name]:.2f} of target ({median(walls):.3f} s)")
        datasets = ["digits"] + ([] if args.quick or not fashion_available() else ["fashion_mnist"])
        stamps = {}
        for dataset in datasets:
            runs = [run([*dlexp, "train", f"dataset={dataset}", *TINY, PROBE], cwd=work, env=env)
                    .check(f"dlexp train dataset={dataset}") for _ in range(max(1, min(repeats, 3)))]
            stamps[dataset] = {k: median([r.stamps()[k] for r in runs]) for k in ("built", "fit_start", "first_step")}
            first = stamps[dataset]["first_step"]
            rows.append([f"dlexp train dataset={dataset}: first step", f"{first:.3f}", f"<= {TARGETS['first_step']}",
                         verdict(first, TARGETS["first_step"])])
            lines.append(f"ratio first_step ({dataset}): {first / TARGETS['first_step']:.2f} of target ({first:.3f} s)")
        profiled = run([sys.executable, "-X", "importtime", "-m", "dlexp", "train", *TINY, PROBE], cwd=work, env=env)
        profiled.check("dlexp train under -X importtime")
        config_check = None if args.quick else check_time(work)
    print(f"start-up ({machine()}; medians of {repeats}, train runs: of {max(1, min(repeats, 3))})")
    print(table(["command", "seconds", "target", "verdict"], rows))
    imports = import_times(profiled.stderr)
    total_imports = sum(imports.values())
    s, p = stamps["digits"], profiled.stamps()
    print(f"\nwhere the time to the first step goes (dlexp train, digits: {s['first_step']:.2f} s; imports from one "
          f"run under -X importtime, {p['first_step']:.2f} s to its first step)")
    breakdown = [[f"imports: {g}", f"{t:.2f}"] for g, t in sorted(imports.items(), key=lambda kv: -kv[1]) if t >= 0.01]
    breakdown += [
        ["imports, total (under -X importtime)", f"{total_imports:.2f}"],
        ["config check: dlexp.config.check_overrides, imports excluded",
         f"{config_check:.2f}" if config_check is not None else "(full mode)"],
        ["start -> callbacks built (imports, config check, Hydra, data, net)", f"{s['built']:.2f}"],
        ["callbacks built -> fit start (loggers, Trainer, fit set-up)", f"{s['fit_start'] - s['built']:.2f}"],
        ["fit start -> first step (Lightning's fit set-up)", f"{s['first_step'] - s['fit_start']:.2f}"],
    ]
    print(table(["phase", "seconds"], breakdown))
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
