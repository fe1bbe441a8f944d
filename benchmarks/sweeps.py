"""Sweeps that fill the machine: a 6-job sweep one job at a time vs its jobs in parallel, cores split among them.

    python benchmarks/sweeps.py            # experiment=optimizers on Fashion-MNIST (digits when absent), 2 epochs
    python benchmarks/sweeps.py --quick    # digits, 1 epoch of 5 batches: checks the script works (< 1 min)
    python benchmarks/sweeps.py --default-threads   # also one at a time at torch's default threads (all cores)

Both sides are the same command, `dlexp train experiment=optimizers dataset=... trainer.max_epochs=N` (six
optimizers), as a user runs it: one at a time is the default launcher with every job at the thread count a parallel
job gets (OMP_NUM_THREADS; on CPUs a different thread count sums in another order and changes the last digits), in
parallel is `hydra/launcher=parallel` (auto: one job per core, cores // jobs threads each). Wall time is the whole
command's; each job's metrics.json (every key but wall_s) must be identical on both sides.
"""
from __future__ import annotations

import json
import os
from importlib.metadata import version
import re
import sys
import tempfile
from pathlib import Path

from common import (Result, child_env, cpu_model, dlexp_command, fashion_available, interleave, machine, median,
                    parser, run, table, verdict)

TARGET = 0.65  # parallel wall time <= 0.65 x one at a time
JOBS = 6  # experiment=optimizers: sgd, momentum, nesterov, adagrad, rmsprop, adam


def per_job_threads() -> tuple[int, int]:
    """(jobs at once, threads per job) that hydra/launcher=parallel's auto picks for the 6 jobs on this machine."""
    from dlexp.sweeps.parallel import available_memory_gb, cores, plan

    return plan("auto", "auto", JOBS, cores(), available_memory_gb())


def job_metrics(stdout: str, cwd: Path) -> dict[str, dict]:
    """{job number: its metrics.json} of the sweep a command printed (`multirun_dir: PATH`, its last line)."""
    sweep = cwd / stdout.strip().splitlines()[-1].removeprefix("multirun_dir: ")
    jobs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return {p.name: json.loads((p / "metrics.json").read_text()) for p in jobs}


def job_threads(stdout: str, cwd: Path) -> set[int]:
    """The torch thread counts the parallel jobs' train.log report (dlexp/sweeps/worker.py)."""
    sweep = cwd / stdout.strip().splitlines()[-1].removeprefix("multirun_dir: ")
    found = (re.search(r"threads: (\d+) \(torch\.get_num_threads", (p / "train.log").read_text())
             for p in sweep.iterdir() if p.name.isdigit())
    return {int(m.group(1)) for m in found if m}


def differences(a: dict[str, dict], b: dict[str, dict]) -> list[str]:
    """'job KEY: A vs B' for every value but wall_s that is not bitwise the same (a missing job or key counts)."""
    found = [f"job {num}: missing on one side" for num in sorted(set(a) ^ set(b))]
    for num in sorted(set(a) & set(b), key=int):
        for key in sorted((set(a[num]) | set(b[num])) - {"wall_s"}):
            if a[num].get(key) != b[num].get(key):
                found.append(f"job {num} {key}: {a[num].get(key)!r} vs {b[num].get(key)!r}")
    return found


def sides(overrides: list[str], threads: int, work: Path, default_threads: bool) -> dict:
    """name -> a function running that side in its own folder (outputs/ there)."""
    base = [*dlexp_command(), "train", *overrides]

    def side(name: str, cmd: list[str], env: dict[str, str]):
        folder = work / name.replace(" ", "_")
        folder.mkdir()
        return lambda: run(cmd, cwd=folder, env=env, timeout=1800).check(name)

    pinned = child_env(OMP_NUM_THREADS=str(threads))
    found = {"one at a time": side("one at a time", base, pinned),
             "parallel": side("parallel", [*base, "hydra/launcher=parallel"], child_env())}
    if default_threads:
        env = {k: v for k, v in child_env().items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        found["one at a time, default threads"] = side("one at a time, default threads", base, env)
    return found


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=1)
    p.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs of every job (default 2; quick 1)")
    p.add_argument("--default-threads", action="store_true",
                   help="also run the sweep one job at a time at torch's default thread count (reported, no target)")
    args = p.parse_args()
    dataset = "digits" if args.quick or not fashion_available() else "fashion_mnist"
    epochs = args.epochs or (1 if args.quick else 2)
    overrides = ["experiment=optimizers", f"dataset={dataset}", f"trainer.max_epochs={epochs}"]
    overrides += ["trainer.limit_train_batches=5", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"] \
        if args.quick else []
    workers, threads = per_job_threads()
    print(f"sweeps: {JOBS} jobs one at a time vs in parallel ({workers} at a time, {threads} thread(s) each)\n"
          f"CPU: {cpu_model()}; {machine()}; torch {version('torch')}\n"
          f"command: dlexp train {' '.join(overrides)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dlexp-bench-") as tmp:
        work = Path(tmp)
        runs = sides(overrides, threads, work, args.default_threads)
        results = interleave(runs, args.repeats or 1)
        folders = {name: work / name.replace(" ", "_") for name in runs}
        metrics = {name: job_metrics(rs[-1].stdout, folders[name]) for name, rs in results.items()}
        counts = job_threads(results["parallel"][-1].stdout, folders["parallel"])
    report(results, metrics, counts, workers, threads, args.repeats or 1)


def report(results: dict[str, list[Result]], metrics: dict[str, dict], counts: set[int], workers: int, threads: int,
           repeats: int) -> None:
    wall = {name: median([r.wall_s for r in rs]) for name, rs in results.items()}
    reference = wall["one at a time"]
    rows = []
    for name in results:
        at_once, per_job = (1, threads) if name != "parallel" else (workers, ",".join(map(str, sorted(counts))))
        if name.endswith("default threads"):
            per_job = f"default ({os.cpu_count()} cores)"
        ratio = wall[name] / reference
        target = f"<= {TARGET}" if name == "parallel" else ""
        in_jobs = sum(m["wall_s"] for m in metrics[name].values())
        used = median([r.cpu_s / r.wall_s for r in results[name]])
        rows.append([name, at_once, per_job, f"{in_jobs:.1f}", f"{used:.2f}", f"{wall[name]:.1f}", f"{ratio:.3f}",
                     target, verdict(ratio, TARGET) if name == "parallel" else ""])
    print(f"wall s: the whole command, median of {repeats}; jobs' wall_s: their metrics.json wall_s added up; cores "
          "used: CPU time of the command and its job processes / wall time (what the machine gave it)")
    print(table(["side", "jobs at once", "threads per job", "jobs' wall_s", "cores used", "wall s", "ratio", "target",
                 "verdict"], rows))
    ratio = wall["parallel"] / reference
    print(f"ratio sweep_parallel: {ratio:.3f} (target <= {TARGET}) {verdict(ratio, TARGET)}")
    if "one at a time, default threads" in wall:
        default = wall["parallel"] / wall["one at a time, default threads"]
        print(f"ratio sweep_parallel_vs_default_threads: {default:.3f} (reported)")
    differ = differences(metrics["one at a time"], metrics["parallel"])
    n = len(metrics["parallel"])
    if differ:
        print(f"per-job metrics: {len(differ)} values differ between one at a time and parallel: "
              f"{'; '.join(differ[:5])}")
    else:
        print(f"per-job metrics: identical ({n} jobs, every metrics.json key but wall_s, bitwise)")
    if "one at a time, default threads" in metrics:
        other = differences(metrics["one at a time"], metrics["one at a time, default threads"])
        print(f"at torch's default threads: {len(other)} values differ from {threads} thread(s)"
              + (f", e.g. {other[0]}" if other else ""))
    print(f"at the end: {machine()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
