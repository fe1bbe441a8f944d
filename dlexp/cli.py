"""`dlexp SUBCOMMAND [overrides]`: argv -> subcommand. Help and `list` import nothing heavy (no torch, no Hydra)."""
from __future__ import annotations

import sys
from pathlib import Path

USAGE = """\
usage: dlexp SUBCOMMAND [overrides...]

Config-driven deep-learning experiments: Hydra config groups composed into a PyTorch Lightning run.

subcommands:
  train [-m] [overrides]   train, test and summarise one run (-m: a sweep over comma-separated values)
  resume RUN_DIR           continue a run (or a sweep's unfinished jobs) from its last checkpoint
  eval RUN_DIR             test report of a classifier; FID/KID/IS/precision-recall of a GAN or VAE run
  sample RUN_DIR [n=64]    images from a GAN or VAE run (seed=0 mode=grid|interpolate|latent_map steps=8 single=true
                           out=DIR), or mode=codes: a plot of an autoencoder's 2-d codes
  compare SWEEP_DIR|RUN_DIR...  the runs' table, best first, and a PNG of their curves and samples
  list [GROUP]             the choices of every config group (or of one) with a one-line description

examples:
  dlexp train                                       convnet on the offline digits dataset
  dlexp train model=mlp model.activation=elu optimizer=nesterov scheduler=exponential
  dlexp train dataset=fashion_mnist model=convnet trainer.max_epochs=2
  dlexp train experiment=optimizers                 one of the notes' experiments (dlexp list experiment)
  dlexp train -m optimizer=sgd,momentum,adam regularizer=none,l2
  dlexp compare outputs/multirun/2026-11-22_10-40-00_d4e5f6   (metric=val/loss out=FILE.png)
  dlexp train model=wgan_gp dataset=mnist
  dlexp sample outputs/runs/2026-11-22_10-31-07_a1b2c3 n=64 mode=interpolate
  dlexp list model

Every run writes outputs/runs/<date>_<time>_<hex>/ with config.yaml, overrides.yaml, metrics.json,
train.log, checkpoints/ and tb/ (tensorboard --logdir outputs). `dlexp train --help` for overrides.
"""

TRAIN_USAGE = """\
usage: dlexp train [-m] [key=value | group=choice | +key=value | ~key ...]

Hydra override grammar: group=choice picks a config file, key=value changes one value,
+key=value adds a key, a,b,c sweeps (with -m), [a,b] combines several files of one group
(regularizer=[l2,dropout], callbacks=[default,early_stopping]).

groups (default first; `dlexp list GROUP` describes each choice):
{groups}

common keys:
  seed=42                     repeatable CPU runs (trainer.deterministic=true for bitwise)
  dataset.batch_size=64       dataset.val_fraction=0.1  dataset.flip=true  dataset.translate=2
  trainer.max_epochs=10       trainer=debug (a few batches, seconds)  trainer=gpu
  optimizer.lr=0.001          optimizer.weight_decay=0
  monitor=val/acc monitor_mode=max   the metric for best checkpoint and early stopping
  model.init_from=RUN_DIR     load matching weights (model.init_include / model.init_exclude regexes)
  ckpt_path=last|FILE         continue the latest run (or FILE's run) in its own directory (= dlexp resume)
  on_nan=stop|skip            a NaN/inf loss stops the run (exit 1) or skips that batch
  callbacks.checkpoint.every_n_train_steps=100   also write last.ckpt every 100 steps
  paths.data_dir=DIR          where datasets are looked for (env DLEXP_DATA_DIR)

Hydra's own flags work too: --cfg job prints the composed config, --info shows the search path.
"""

HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}
DEFAULTS = {"dataset": "digits", "model": "convnet", "optimizer": "adam", "scheduler": "none",
            "regularizer": "none", "trainer": "cpu", "callbacks": "default", "logger": "tensorboard",
            "task": "classification", "gan_loss": "null"}


def describe(path: Path) -> str:
    """The first comment line of a config file that is not a Hydra directive."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#") and not line.startswith("# @"):
            return line.lstrip("# ").strip()
        if line and not line.startswith("#"):
            break
    return ""


def list_groups(group: str | None) -> int:
    from dlexp.config import conf_dir, did_you_mean, groups

    known = {g: c for g, c in groups().items() if g not in ("hydra", "paths")}
    if group is not None and group not in known:
        print(f"error: unknown group '{group}'{did_you_mean(group, list(known))}; groups: {', '.join(known)}",
              file=sys.stderr)
        return 2
    for name in [group] if group else known:
        print(f"{name}:" + (f"  (default: {DEFAULTS[name]})" if name in DEFAULTS else ""))
        choices = known[name]
        width = max((len(c) for c in choices), default=0)
        for choice in choices:
            print(f"  {choice:<{width}}  {describe(conf_dir() / name / f'{choice}.yaml')}")
        if not choices:
            print("  (none yet)")
    return 0


def _gpu_present() -> bool:
    """NVIDIA driver visible, checked without importing torch."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def train(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        from dlexp.config import groups

        lines = [f"  {g:<12} {DEFAULTS.get(g, '-'):<12} {', '.join(c)}" for g, c in groups().items()
                 if g not in ("hydra", "paths")]
        print(TRAIN_USAGE.format(groups="\n".join(lines)))
        return 0
    overrides, flags = [], []
    for i, arg in enumerate(args):
        takes_value = i > 0 and args[i - 1] in HYDRA_VALUE_FLAGS and "=" not in arg  # e.g. --cfg job
        (flags if arg.startswith("-") or takes_value else overrides).append(arg)
    multirun = any(f in ("-m", "--multirun") for f in flags)
    inspect = any(f in ("--cfg", "-c", "--info", "-i") for f in flags)  # Hydra prints, runs nothing
    if multirun and inspect:
        print("error: --cfg/--info show one job's config and cannot be combined with -m; drop -m", file=sys.stderr)
        return 2
    from dlexp.config import ConfigError, check_overrides, check_writable

    ckpt = [o for o in overrides if o.partition("=")[0] == "ckpt_path"]
    if ckpt:  # continue an earlier run in its own directory: `dlexp resume` under another name
        from dlexp import resume

        output_dir = next((o.partition("=")[2] for o in overrides if o.startswith("paths.output_dir=")), "outputs")
        rest = [o for o in overrides if o not in ckpt and not o.startswith("paths.output_dir=")]
        return _guarded(lambda: resume.from_ckpt_path(ckpt[0].partition("=")[2], output_dir, rest))

    try:
        cfg = check_overrides(overrides)
        check_writable(Path(cfg.paths.output_dir))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not multirun and not inspect and _preset_sweep(overrides):
        flags.append("-m")  # a sweep preset (experiment=optimizers) runs all of its jobs
        multirun = True
    if _gpu_present() and not any(o.split("=")[0].lstrip("+~") == "trainer" for o in overrides):
        overrides.append("trainer=gpu")  # cpu is the default only where no GPU is present
    from dlexp import train as train_module
    from dlexp.sweep import SummaryCallback

    if multirun:
        from dlexp import search

        search.register()  # hydra/sweeper=optuna (hparams_search=...): dlexp's own Optuna sweeper
    train_module.run(flags + overrides)
    if multirun and SummaryCallback.sweep_dir:
        print(f"multirun_dir: {SummaryCallback.sweep_dir}")
    return 1 if multirun and SummaryCallback.failed else 0


def _preset_sweep(overrides: list[str]) -> bool:
    """The chosen experiment preset declares a sweep (hydra.sweeper.params) that the command line does not pin."""
    if not any(o.partition("=")[0] == "experiment" for o in overrides):
        return False
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dlexp.config import compose

    single = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
    params = compose(single, return_hydra_config=True).hydra.sweeper.get("params") or {}
    pinned = {o.partition("=")[0].lstrip("+~") for o in overrides}
    sweeps = [key for key in params if key not in pinned]
    if sweeps:
        print(f"experiment sweeps {', '.join(sweeps)}: running it as a multirun (-m)", file=sys.stderr)
    return bool(sweeps)


def _guarded(call) -> int:
    """Run a subcommand; a ConfigError is one line on stderr and exit code 2."""
    from dlexp.config import ConfigError

    try:
        return call()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"dlexp {version('dlexp')}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train(rest)
    if command == "resume":
        from dlexp import resume

        return _guarded(lambda: resume.main(rest))
    if command == "eval":
        from dlexp import evaluate

        if any(a in ("-h", "--help") for a in rest):
            print(evaluate.USAGE)
            return 0
        return _guarded(lambda: evaluate.main(rest))
    if command == "sample":
        from dlexp import sample

        if any(a in ("-h", "--help") for a in rest):
            print(sample.USAGE)
            return 0
        return _guarded(lambda: sample.main(rest))
    if command == "compare":
        from dlexp import compare

        if not rest or any(a in ("-h", "--help") for a in rest):
            print(compare.USAGE)
            return 0 if rest else 2
        return _guarded(lambda: compare.main(rest))
    if command == "list":
        if len(rest) > 1:
            print("error: dlexp list takes at most one GROUP", file=sys.stderr)
            return 2
        return list_groups(rest[0] if rest else None)
    print(f"error: unknown subcommand '{command}'; use one of: train, resume, eval, sample, compare, list (dlexp --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
