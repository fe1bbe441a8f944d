"""Overhead of `dlexp train` over a hand-written PyTorch loop: convnet, and WGAN-GP with n_critic 5.

    python benchmarks/overhead.py            # Fashion-MNIST (digits when absent), ~4 min on 2 cores
    python benchmarks/overhead.py --quick    # digits, a few batches: checks the script works

What is timed, and why: the whole command, as a user runs it, on both sides. dlexp is the installed
`dlexp train ...` console script; the reference is benchmarks/plain_loops.py run by the same Python as
a script file. Both wall times include interpreter start-up, imports and data loading, because a
runner that trains as fast but starts 3 s later does cost 3 s. Both sides do the same work: the same
net class (dlexp.nets) built from the same composed config, the same tensors, split, batch order,
seed and number of optimizer steps, validation each epoch, a checkpoint, the test (GANs: a sample
grid), so their results must agree (printed as a check). dlexp runs with logger=none: the plain
loop keeps no experiment log either (--tensorboard adds a row with dlexp's default TensorBoard
logger). The sides alternate (A B A B) and medians are compared, so load from other processes hits
both; CPU time (user + system) is shown too, as it is less disturbed by other load than wall time.
A probe callback (timing_probe.py) and the loop's own stamps split each wall time into start-up
(command -> first training step) and fit (first step -> end of the last epoch), which gives images/s.
For the convnet a third side, lightning_loop.py, runs the plain loop inside a bare LightningModule:
what Lightning itself costs (its imports and its loop), so dlexp's own share is the rest.
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

from common import (HERE, PROBE, Result, child_env, dlexp_command, fashion_available, interleave, machine, median,
                    parser, run, table, verdict)

TARGETS = {"convnet": 1.05, "wgan_gp": 1.10}  # issue 7: wall-time ratio dlexp / plain loop


def cases(quick: bool) -> list[dict]:
    """Each comparison: its name, the dlexp overrides, and the result both sides must reach."""
    dataset = "digits" if quick or not fashion_available() else "fashion_mnist"
    # trainer=cpu: the plain loops run on the CPU, and dlexp would pick trainer=gpu where a GPU is present
    convnet = ["model=convnet", f"dataset={dataset}", "trainer=cpu", "trainer.max_epochs=1"]
    wgan = ["model=wgan_gp", f"dataset={dataset}", "trainer=cpu", "trainer.max_epochs=1",
            f"trainer.limit_train_batches={5 if quick else 150}"]  # 150 critic steps, 30 generator steps
    return [{"name": "convnet", "overrides": convnet, "result_key": "test/acc"},
            {"name": "wgan_gp", "overrides": wgan, "result_key": "train/d_loss"}]


def write_spec(overrides: list[str], folder: Path) -> Path:
    """dlexp's composed config for these overrides, resolved, as the plain loop's SPEC.json."""
    from omegaconf import OmegaConf

    from dlexp.config.compose import compose

    cfg = compose(overrides)
    sections = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "dataset", "optimizer", "task")}
    gan_loss = OmegaConf.to_container(cfg.gan_loss, resolve=True) if cfg.get("gan_loss") is not None else None
    spec = {**sections, "gan_loss": gan_loss, "seed": cfg.seed, "epochs": cfg.trainer.max_epochs,
            "limit_train_batches": cfg.trainer.limit_train_batches}
    path = folder / "spec.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def dlexp_metrics(result: Result) -> dict:
    run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    return json.loads((run_dir / "metrics.json").read_text())


def plain_result(result: Result) -> dict:
    line = next(l for l in reversed(result.stdout.splitlines()) if l.startswith("result "))
    return json.loads(line.removeprefix("result "))


def compare(case: dict, repeats: int, work: Path, with_tensorboard: bool) -> tuple[list[list[object]], str]:
    """Interleaved runs of both sides: table rows (medians, ratio, verdict) and a line on whether results agree."""
    name, overrides = case["name"], case["overrides"]
    folder = work / name
    folder.mkdir()
    spec = write_spec(overrides, folder)
    plain_cmd = [sys.executable, str(HERE / "plain_loops.py"), name, str(spec)]
    sides = {"plain": lambda: run(plain_cmd, cwd=folder, env=child_env()).check(f"plain {name}")}
    if name == "convnet":  # the same loop in a bare LightningModule: Lightning's own cost, without dlexp
        lightning_cmd = [sys.executable, str(HERE / "lightning_loop.py"), name, str(spec)]
        sides["lightning"] = lambda: run(lightning_cmd, cwd=folder, env=child_env()).check(f"lightning {name}")
    sides["dlexp"] = lambda: run([*dlexp_command(), "train", *overrides, "logger=none", PROBE], cwd=folder,
                                 env=child_env()).check(f"dlexp train {name}")
    if with_tensorboard:
        sides["dlexp+tb"] = lambda: run([*dlexp_command(), "train", *overrides, PROBE], cwd=folder,
                                        env=child_env()).check(f"dlexp train {name} (tensorboard)")
    print(f"{name}: {' '.join(overrides)} ({repeats} runs per side, interleaved)", file=sys.stderr, flush=True)
    results = interleave(sides, repeats)
    images = plain_result(results["plain"][0])["train_images"]
    key = case["result_key"]
    plain_value = plain_result(results["plain"][0])[key]
    rows, values, plain_wall = [], {}, median([r.wall_s for r in results["plain"]])
    plain_cpu = median([r.cpu_s for r in results["plain"]])
    plain_fit = median([r.stamps()["fit_end"] - r.stamps()["first_step"] for r in results["plain"]])
    for side, runs in results.items():
        wall, cpu = median([r.wall_s for r in runs]), median([r.cpu_s for r in runs])
        startup = median([r.stamps()["first_step"] for r in runs])
        fit = median([r.stamps()["fit_end"] - r.stamps()["first_step"] for r in runs])
        value = values[side] = plain_result(runs[0])[key] if side in ("plain", "lightning") \
            else dlexp_metrics(runs[0]).get(key)
        ratio = wall / plain_wall
        target = TARGETS[name] if side == "dlexp" else None
        rows.append([name, side, f"{wall:.2f}", f"{startup:.2f}", f"{fit:.2f}", f"{images / fit:.0f}",
                     f"{value:.4f}" if value is not None else "-", f"{fit / plain_fit:.3f}", f"{cpu:.1f}",
                     f"{cpu / plain_cpu:.3f}",
                     f"{ratio:.3f}", f"<= {target}" if target else "", verdict(ratio, target) if target else ""])
    same = all(v is not None and math.isclose(v, plain_value, rel_tol=1e-4, abs_tol=1e-4) for v in values.values())
    shown = ", ".join(f"{side} {v:.4f}" if v is not None else f"{side} -" for side, v in values.items())
    return rows, f"results {name} ({key}): {shown}: {'agree' if same else 'DIFFER: the sides did not do the same work'}"


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--tensorboard", action="store_true", help="also time dlexp with its default TensorBoard logger")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    rows, checks = [], []
    with tempfile.TemporaryDirectory(prefix="dlexp-bench-") as tmp:
        for case in cases(args.quick):
            tensorboard = args.tensorboard and case["name"] == "convnet"
            case_rows, check = compare(case, repeats, Path(tmp), with_tensorboard=tensorboard)
            rows += case_rows
            checks.append(check)
    print(f"overhead: dlexp train vs a plain PyTorch loop ({machine()}; medians of {repeats})")
    print(table(["model", "side", "wall s", "start-up s", "fit s", "images/s (fit)", "result", "fit ratio", "CPU s",
                 "CPU ratio", "ratio", "target", "verdict"], rows))
    print("\n".join(checks))
    for row in rows:
        if row[-1]:
            print(f"ratio {row[0]}: {row[-3]} (target {row[-2]}) {row[-1]}")


if __name__ == "__main__":
    main()
