"""Overhead of `dlexp train` over a hand-written PyTorch loop and over a bare Lightning script (issue 16, target 1
and 2): convnet (the notes' CNN, batch 100) and WGAN-GP with n_critic 5.

    python benchmarks/overhead.py            # Fashion-MNIST (digits when absent), ~6 min on 2 cores
    python benchmarks/overhead.py --quick    # digits, a few batches: checks the script works

What is timed, and why: the whole command, as a user runs it, on every side. dlexp is the installed
`dlexp train ...` console script; the references are benchmarks/plain_loops.py and (convnet) lightning_loop.py,
run by the same Python as script files. All sides do the same work: the same net class (dlexp.nets) built from the
same composed config, the same tensors, split, batch order, seed, threads and number of optimizer steps,
validation each epoch, a checkpoint per epoch, the test (GANs: a sample grid), so their results must agree
(printed as a check). dlexp runs with logger=none (the references keep no experiment log either) and with its
CPU switches pinned to the references' (channels_last=false, threads = the cores): this measures the loop, not the
switches. The sides alternate (A B C A B C) and medians are compared. Stamps (timing_probe.py in dlexp, the
loops' own) split each wall time into start-up (command -> first training step) and epochs; the steady-state
speed is the second epoch's (training, validation and checkpoint), in training images/s.

Targets (issue 16): dlexp's steady-state images/s >= 0.95x the plain loop's (convnet and wgan_gp); dlexp's whole
command <= 1.03x the bare Lightning script's (convnet); dlexp's start-up <= the plain loop's + 1.0 s.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

from common import (HERE, PROBE, Result, child_env, cpu_model, dlexp_command, fashion_available, interleave, machine,
                    median, parser, run, table, verdict)

FIT_TARGET, LIGHTNING_TARGET, STARTUP_TARGET = 0.95, 1.03, 1.0
EPOCHS = 2  # the second epoch is the steady state: no first-call allocations, oneDNN primitives made


def cases(quick: bool) -> list[dict]:
    """Each comparison: its name, the dlexp overrides, and the result all sides must reach."""
    dataset = "digits" if quick or not fashion_available() else "fashion_mnist"
    # trainer=cpu: the plain loops run on the CPU, and dlexp would pick trainer=gpu where a GPU is present;
    # the CPU switches pinned to what the plain loop does (the loop is measured here, not the switches)
    common = [f"dataset={dataset}", "trainer=cpu", f"trainer.max_epochs={EPOCHS}", "channels_last=false",
              f"threads={len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}"]
    convnet = ["model=convnet", *common, *(["trainer.limit_train_batches=8"] if quick else [])]
    wgan = ["model=wgan_gp", *common, f"trainer.limit_train_batches={5 if quick else 150}"]  # 150 critic steps
    # the last epoch's validation accuracy: dlexp tests its best checkpoint, the references their last weights
    return [{"name": "convnet", "overrides": convnet, "result_key": "val/acc"},
            {"name": "wgan_gp", "overrides": wgan, "result_key": "train/d_loss"}]


def write_spec(overrides: list[str], folder: Path) -> Path:
    """dlexp's composed config for these overrides, resolved, as the plain loop's SPEC.json."""
    from omegaconf import OmegaConf

    from dlexp.config.compose import compose

    cfg = compose(overrides)
    sections = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "dataset", "optimizer", "task")}
    gan_loss = OmegaConf.to_container(cfg.gan_loss, resolve=True) if cfg.get("gan_loss") is not None else None
    spec = {**sections, "gan_loss": gan_loss, "seed": cfg.seed, "epochs": cfg.trainer.max_epochs,
            "limit_train_batches": cfg.trainer.limit_train_batches, "threads": cfg.threads}
    path = folder / "spec.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def dlexp_metrics(result: Result) -> dict:
    run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("run_dir: "))
    return json.loads((run_dir / "metrics.json").read_text())


def plain_result(result: Result) -> dict:
    line = next(line for line in reversed(result.stdout.splitlines()) if line.startswith("result "))
    return json.loads(line.removeprefix("result "))


def steady_s(result: Result) -> float:
    """The second epoch's wall time: training, validation and the epoch's checkpoint."""
    stamps = result.stamps()
    return stamps[f"epoch_end_{EPOCHS - 1}"] - stamps[f"epoch_end_{EPOCHS - 2}"]


def compare(case: dict, repeats: int, work: Path, with_tensorboard: bool) -> tuple[list[list[object]], list[str]]:
    """Interleaved runs of every side: table rows (medians, ratios) and the check that results agree."""
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
    per_epoch = plain_result(results["plain"][0])["train_images"] / EPOCHS
    walls = {side: median([r.wall_s for r in runs]) for side, runs in results.items()}
    startups = {side: median([r.stamps()["first_step"] for r in runs]) for side, runs in results.items()}
    speeds = {side: per_epoch / median([steady_s(r) for r in runs]) for side, runs in results.items()}
    rows = [[name, side, f"{walls[side]:.2f}", f"{startups[side]:.2f}", f"{per_epoch / speeds[side]:.2f}",
             f"{speeds[side]:.0f}", f"{speeds[side] / speeds['plain']:.3f}", f"{walls[side] / walls['plain']:.3f}"]
            for side in results]
    return rows, verdicts(name, walls, startups, speeds) + [agreement(case, results)]


def verdicts(name: str, walls: dict, startups: dict, speeds: dict) -> list[str]:
    """The issue's targets as `ratio NAME: VALUE (...) PASS|FAIL` lines."""
    fit = speeds["dlexp"] / speeds["plain"]
    lines = [f"ratio {name}_fit: {fit:.3f} (dlexp / plain steady-state images/s {speeds['dlexp']:.0f} / "
             f"{speeds['plain']:.0f}; target >= {FIT_TARGET}) {verdict(fit, FIT_TARGET, at_most=False)}"]
    if "lightning" in walls:
        whole = walls["dlexp"] / walls["lightning"]
        lines.append(f"ratio {name}_vs_lightning: {whole:.3f} (whole command, dlexp {walls['dlexp']:.2f} s / bare "
                     f"Lightning {walls['lightning']:.2f} s; target <= {LIGHTNING_TARGET}) "
                     f"{verdict(whole, LIGHTNING_TARGET)}")
        extra = startups["dlexp"] - startups["plain"]
        lines.append(f"ratio {name}_startup_extra_s: {max(extra, 0.001):.3f} (command -> first step, dlexp "
                     f"{startups['dlexp']:.2f} s - plain {startups['plain']:.2f} s; bare Lightning "
                     f"{startups['lightning']:.2f} s; target <= {STARTUP_TARGET} s) {verdict(extra, STARTUP_TARGET)}")
    return lines


def agreement(case: dict, results: dict[str, list[Result]]) -> str:
    """Whether every side reached the plain loop's result (to 1e-4): the sides did the same work."""
    key = case["result_key"]
    values = {side: plain_result(runs[0])[key] if side in ("plain", "lightning") else dlexp_metrics(runs[0]).get(key)
              for side, runs in results.items()}
    same = all(v is not None and math.isclose(v, values["plain"], rel_tol=1e-4, abs_tol=1e-4) for v in values.values())
    shown = ", ".join(f"{side} {v:.4f}" if v is not None else f"{side} -" for side, v in values.items())
    return f"results {case['name']} ({key}): {shown}: " + ("agree" if same else "DIFFER: the sides did different work")


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=3)
    p.add_argument("--tensorboard", action="store_true", help="also time dlexp with its default TensorBoard logger")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    rows, lines = [], []
    with tempfile.TemporaryDirectory(prefix="dlexp-bench-") as tmp:
        for case in cases(args.quick):
            tensorboard = args.tensorboard and case["name"] == "convnet"
            case_rows, case_lines = compare(case, repeats, Path(tmp), with_tensorboard=tensorboard)
            rows += case_rows
            lines += case_lines
    print(f"overhead: dlexp train vs a plain PyTorch loop and bare Lightning ({machine()}; {cpu_model()}; "
          f"medians of {repeats})")
    print(table(["model", "side", "wall s", "start-up s", "steady epoch s", "images/s (steady)", "speed vs plain",
                 "wall vs plain"], rows))
    print("\n".join(line for line in lines if line.startswith("results ")))
    print("\n".join(line for line in lines if line.startswith("ratio ")))


if __name__ == "__main__":
    main()
