"""`dlexp runs` over 1000 run directories: the whole command's wall time, target <= 1 s.

    python benchmarks/runs_listing.py                # 1000 runs, medians of 5
    python benchmarks/runs_listing.py --quick        # 100 runs, one of each: checks the script works
    python benchmarks/runs_listing.py --runs 5000    # more

The run directories are written into a temporary outputs/ folder, 4 in 5 as single runs (runs/<id>/) and the rest as
sweeps of 20 jobs (multirun/<id>/<job>/), in the very format `dlexp train` writes (a check below compares one with
dlexp's own writers): config.yaml of composed configs (convnet and mlp on digits, the dnn_mnist preset, a WGAN-GP),
overrides.yaml, and metrics.json of completed (most), interrupted and failed runs; some are unfinished (no
metrics.json) and some damaged (metrics.json cut mid-write, empty, binary). Every time is the installed console
script's, from just before the process starts to its exit (start-up included: a user waits for it too), on a warm
page cache; the listing is checked (every run once, statuses as written) before it is timed. The target is on wall
time; CPU time (user + system) is printed too, since on a shared machine it moves less with the load.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import dlexp_command, machine, median, parser, run, table, verdict

TARGET_S = 1.0  # the issue's: 1000 run directories listed in under a second
VARIANTS = [[], ["model=mlp", "optimizer=sgd"], ["experiment=dnn_mnist"], ["model=wgan_gp"]]
SWEEP_JOBS = 20
PLACEHOLDER = "/RUN_DIR_PLACEHOLDER"


def templates() -> list[tuple[list[str], str, str | None]]:
    """(overrides, config.yaml text with PLACEHOLDER for the run directory, monitor) of each VARIANT, composed by
    dlexp and written by its RunDir, as `dlexp train` does."""
    from omegaconf import OmegaConf, open_dict

    from dlexp.config.compose import compose
    from dlexp.engine.rundir import CONFIG, RunDir

    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for overrides in VARIANTS:
            cfg = compose([f"run_dir={PLACEHOLDER}", *overrides], return_hydra_config=True)
            choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
            with open_dict(cfg):
                del cfg["hydra"]
            RunDir(Path(tmp)).write_config(OmegaConf.to_container(cfg, resolve=True), choices)
            found.append((overrides, (Path(tmp) / CONFIG).read_text(), cfg.monitor))
    return found


def metrics_of(status: str, monitor: str | None, run_dir: Path, rng: random.Random) -> dict[str, object]:
    """metrics.json's content as dlexp/engine/record.py writes it for a run that ended so."""
    wall = round(rng.uniform(5, 3000), 2)
    if status == "interrupted":
        return {"resume": f"dlexp resume {run_dir}", "status": status, "wall_s": wall}
    if status == "failed":
        return {"error": "non-finite loss at step 12 (train/loss = nan)", "status": status, "wall_s": wall}
    epochs = rng.randint(1, 40)
    metrics: dict[str, object] = {"epochs": epochs, "global_step": epochs * 21, "params": 29034, "status": status,
                                  "wall_s": wall, "world_size": 1}
    if monitor is None:  # a GAN: the last epoch's losses
        return {**metrics, "train/d_loss": rng.uniform(-2, 0), "train/g_loss": rng.uniform(0, 2)}
    acc = rng.uniform(0.5, 1.0)
    return {**metrics, "test/acc": acc, "test/loss": 1 - acc, "train/acc": acc, "train/loss": 1 - acc,
            "val/acc": acc, "val/acc_best": acc, "val/loss": 1 - acc}


def as_json(metrics: dict[str, object]) -> str:
    """metrics.json's text: keys sorted, indented (RunDir.write_metrics without its fsync, which would dominate)."""
    return json.dumps(dict(sorted(metrics.items())), indent=2) + "\n"


def run_dirs(outputs: Path, n: int, rng: random.Random) -> list[Path]:
    """n run directory paths, newest first: a sweep of SWEEP_JOBS jobs (one id) per 5 * SWEEP_JOBS runs, the rest
    single runs, each id <YYYY-MM-DD_HH-MM-SS>_<6 hex> (docs/contracts.md, C2), ten minutes apart."""
    now, sweeps, paths = time.time(), n // 5 // SWEEP_JOBS, []
    for i in range(sweeps + n - sweeps * SWEEP_JOBS):
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(now - 600 * i))
        run_id = f"{stamp}_{rng.getrandbits(24):06x}"
        if i < sweeps:
            paths += [outputs / "multirun" / run_id / str(job) for job in range(SWEEP_JOBS)]
        else:
            paths.append(outputs / "runs" / run_id)
    return paths


def write_runs(outputs: Path, n: int, seed: int = 0) -> Counter:
    """n run directories under outputs/ (runs/ and multirun/<sweep>/); returns how many of each status."""
    from omegaconf import OmegaConf

    rng, kinds, written, now = random.Random(seed), templates(), Counter(), time.time()
    for i, run_dir in enumerate(run_dirs(outputs, n, rng)):
        overrides, config, monitor = kinds[i % len(kinds)]
        overrides = [*overrides, f"seed={i}"]
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(config.replace(PLACEHOLDER, str(run_dir)))
        (run_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
        (run_dir / "train.log").write_text("[2026-12-05 06:34:00,000][dlexp][INFO] model convnet ...\n")
        status = rng.choices(["completed", "interrupted", "failed", "unfinished", "unreadable"], [85, 6, 4, 3, 2])[0]
        if status == "unreadable":
            whole = as_json(metrics_of("completed", monitor, run_dir, rng))
            (run_dir / "metrics.json").write_bytes(rng.choice([whole[:len(whole) // 2].encode(), b"", b"\x80\xff"]))
        elif status != "unfinished":
            (run_dir / "metrics.json").write_text(as_json(metrics_of(status, monitor, run_dir, rng)))
        started = now - 60 * i  # config.yaml is written when a run starts: its mtime is the run's age
        os.utime(run_dir / "config.yaml", (started, started))
        written[status] += 1
    return written


def check_format(outputs: Path) -> None:
    """One synthetic run's files are byte for byte what dlexp's RunDir writes for the same content."""
    import yaml

    from dlexp.engine.rundir import RunDir

    sample = next(p.parent for p in sorted((outputs / "runs").glob("*/metrics.json")))
    with tempfile.TemporaryDirectory() as tmp:
        ours = RunDir(Path(tmp))
        ours.write_metrics(json.loads((sample / "metrics.json").read_text()))
        ours.write_overrides(yaml.safe_load((sample / "overrides.yaml").read_text()))
        for name in ("metrics.json", "overrides.yaml"):
            assert (Path(tmp) / name).read_text() == (sample / name).read_text(), f"{name} differs from dlexp's"


def check_listing(work: Path, written: Counter) -> None:
    """`dlexp runs --json` lists every run once, with the status it was written with."""
    listed = json.loads(run([*dlexp_command(), "runs", "--json"], cwd=work).check("dlexp runs --json").stdout)
    assert len({r["path"] for r in listed}) == sum(written.values()), (len(listed), written)
    assert Counter(r["status"] for r in listed) == written, (Counter(r["status"] for r in listed), written)


def main() -> None:
    args = parser(__doc__.splitlines()[0], repeats=5)
    args.add_argument("--runs", type=int, default=None, help="run directories to list (default 1000; quick 100)")
    args = args.parse_args()
    repeats, n = args.repeats or (1 if args.quick else 5), args.runs or (100 if args.quick else 1000)
    target = TARGET_S * max(1.0, n / 1000)  # the 1 s per 1000 runs (fewer runs: still 1 s, start-up counts)
    with tempfile.TemporaryDirectory(prefix="dlexp-runs-") as tmp:
        work = Path(tmp)
        written = write_runs(work / "outputs", n)
        check_format(work / "outputs")
        check_listing(work, written)
        rows = []
        for cmd in (["runs"], ["runs", "--json"], ["runs", "status=failed"], ["--help"]):
            command = f"dlexp {' '.join(cmd)}"
            results = [run([*dlexp_command(), *cmd], cwd=work).check(command) for _ in range(repeats)]
            wall, cpu = median([r.wall_s for r in results]), median([r.cpu_s for r in results])
            rows.append([command, f"{wall:.3f}", f"{cpu:.3f}", f"<= {target:g}", verdict(wall, target)])
    rows[-1][0], rows[-1][3:] = "dlexp --help (start-up alone)", ["-", "-"]
    print(f"dlexp runs over {n} run directories ({dict(written)}; {machine()}; medians of {repeats})")
    print(table(["command", "wall s", "cpu s (user + sys)", "target (wall)", "verdict"], rows))
    print()
    for command, seconds, _, _, result in rows[:-1]:
        print(f"ratio {command.removeprefix('dlexp ')}: {float(seconds) / target:.2f} of target "
              f"({seconds} s for {n} runs) {result}")
    print(f"\n{rows[0][4]}: `dlexp runs` listed {n} run directories in {rows[0][1]} s (target {target:g} s)")


if __name__ == "__main__":
    main()
