"""`dlexp train [-m] [overrides]`: check every override, then run Hydra's main with one run (a sweep's job) each.

Hydra composes the config and makes the run (or sweep) directory; `train_job` hands it to the engine. The
errors the engine ends a run with go back to dlexp/cli.py, which turns them into exit codes.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra_plugins.dlexp import register as register_plugins
from omegaconf import DictConfig

from dlexp.config.checks import check_overrides, check_writable
from dlexp.config.compose import compose, conf_dir, register_resolvers
from dlexp.engine.ranks import rank_overrides
from dlexp.errors import ConfigError, RunFailed, RunInterrupted
from dlexp.sweeps.parallel import Unwind
from dlexp.sweeps.summary import write_summary

HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                     "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}


def main(args: list[str]) -> int:
    flags, overrides = split_flags(args)
    multirun = any(f in ("-m", "--multirun") for f in flags)
    inspect = any(f in ("--cfg", "-c", "--info", "-i") for f in flags)  # Hydra prints, runs nothing
    if multirun and inspect:
        raise ConfigError("--cfg/--info show one job's config and cannot be combined with -m; drop -m")
    ckpt = [o for o in overrides if o.partition("=")[0] == "ckpt_path"]
    if ckpt:  # continue an earlier run in its own directory: `dlexp resume` under another name
        from dlexp.commands import resume  # deferred: it loads the engine (torch, Lightning: 2 s)

        output_dir = next((o.partition("=")[2] for o in overrides if o.startswith("paths.output_dir=")), "outputs")
        rest = [o for o in overrides if o not in ckpt and not o.startswith("paths.output_dir=")]
        return resume.from_ckpt_path(ckpt[0].partition("=")[2], output_dir, rest)
    cfg = check_overrides(overrides)
    check_writable(Path(cfg.paths.output_dir))
    if not multirun and not inspect and preset_sweep(overrides):
        flags.append("-m")  # a sweep preset (experiment=optimizers) runs all of its jobs
        multirun = True
    if gpu_present() and not any(o.split("=")[0].lstrip("+~") == "trainer" for o in overrides):
        overrides.append("trainer=gpu")  # cpu is the default only where no GPU is present
    if not multirun:
        run_hydra(flags + overrides)
        return 0
    register_plugins()  # dlexp's own Optuna sweeper (hparams_search=...) and parallel launcher
    folder = sweep_dir(overrides)  # composed before Hydra's main takes over Hydra's global state
    run_hydra(flags + overrides)
    return sweep_result(folder)


def split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra's flags such as -m and --cfg job, the overrides)."""
    flags, overrides = [], []
    for i, arg in enumerate(args):
        takes_value = i > 0 and args[i - 1] in HYDRA_VALUE_FLAGS and "=" not in arg  # e.g. --cfg job
        (flags if arg.startswith("-") or takes_value else overrides).append(arg)
    return flags, overrides


def run_hydra(args: list[str]) -> None:
    """Hydra's main over `args` (overrides and flags), with train_job as its task; engine errors re-raised here."""
    register_resolvers()
    sys.argv = ["dlexp train", *args, *rank_overrides()]  # a rank > 0 of torchrun/srun: scratch directories
    try:
        hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")(train_job)()
    except Unwind as unwind:
        raise unwind.error from None


def train_job(cfg: DictConfig) -> float | None:
    """Hydra's task function: one run in the directory Hydra made; returns the monitored metric (for sweepers).

    In a sweep, a run that fails is recorded (metrics.json, the summary) and the sweep goes on; an interrupted
    one stops the sweep.
    """
    from dlexp.engine.execute import execute  # deferred: config errors come before torch and Lightning load

    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    try:
        return execute(cfg, Path(hydra_cfg.runtime.output_dir), choices, list(hydra_cfg.overrides.task), in_sweep)
    except (ConfigError, RunFailed) as e:
        if not in_sweep:
            raise Unwind(e) from None
        print(f"error: {e}", file=sys.stderr)
        return None
    except RunInterrupted as e:
        raise Unwind(e) from None


def preset_sweep(overrides: list[str]) -> bool:
    """The chosen experiment preset declares a sweep (hydra.sweeper.params) that the command line does not pin."""
    if not any(o.partition("=")[0] == "experiment" for o in overrides):
        return False
    params = _first_job(overrides).hydra.sweeper.get("params") or {}
    pinned = {o.partition("=")[0].lstrip("+~") for o in overrides}
    sweeps = [key for key in params if key not in pinned]
    if sweeps:
        print(f"experiment sweeps {', '.join(sweeps)}: running it as a multirun (-m)", file=sys.stderr)
    return bool(sweeps)


def sweep_dir(overrides: list[str]) -> Path:
    """The sweep's directory (hydra.sweep.dir; dlexp_run_id is fixed per process, so this is the one Hydra made)."""
    return Path(_first_job(overrides).hydra.sweep.dir).resolve()


def sweep_result(folder: Path) -> int:
    """Print the sweep directory (absolute, the last line); a sweep with a job that did not complete fails."""
    rows = write_summary(folder) if folder.is_dir() else []
    print(f"multirun_dir: {folder}", flush=True)
    failed = [row["job"] for row in rows if row["status"] != "completed"]
    if failed:
        raise RunFailed(f"{len(failed)} of {len(rows)} jobs did not complete (jobs {', '.join(failed)}; "
                        f"{folder / 'summary.md'})")
    return 0


def _first_job(overrides: list[str]) -> Any:
    """The config of the sweep's first job, with Hydra's own settings (sweeper, sweep directory)."""
    single = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
    return compose(single, return_hydra_config=True)


def gpu_present() -> bool:
    """An NVIDIA driver is visible (checked without importing torch)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())
