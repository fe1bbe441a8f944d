"""`dlexp resume RUN_DIR|SWEEP_DIR [key=value ...]`: continue a run in its own directory from checkpoints/last.ckpt.

The run's saved config is used as it is; only keys that do not change what the run computes up to the
checkpoint (how long it trains, how often it logs or checkpoints) may be overridden. A sweep directory
resumes its unfinished jobs one by one and skips the completed ones.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import _locate
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from dlexp.commands import usage
from dlexp.config.checks import check_loggers
from dlexp.config.compose import did_you_mean
from dlexp.config.types import check_type
from dlexp.engine.checkpoint import load_checkpoint
from dlexp.engine.execute import execute
from dlexp.engine.logs import append_to_run_log
from dlexp.engine.rundir import RunDir, is_run_dir
from dlexp.errors import ConfigError
from dlexp.sweeps.summary import to_markdown, write_summary

CHANGEABLE = (
    "trainer.max_epochs", "trainer.max_steps", "trainer.min_epochs", "trainer.log_every_n_steps",
    "trainer.limit_val_batches", "trainer.limit_test_batches", "callbacks.progress.refresh_rate",
    "callbacks.samples.every_n_epochs", "callbacks.checkpoint.every_n_train_steps",
)


def apply_overrides(cfg: Any, choices: dict[str, str], overrides: list[str]) -> list[str]:
    """Apply the changeable overrides to the run's config; an override repeating the run's value is accepted."""
    applied = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key, value = o.key_or_group.lstrip("+~"), o.value()
        if key in choices:
            if str(value) != str(choices[key]):
                raise ConfigError(f"cannot change {key} on resume (the run used {key}={choices[key]})")
            continue
        current = OmegaConf.select(cfg, key, default="<missing>")
        if current != "<missing>" and current == value:
            continue
        if key not in CHANGEABLE:
            raise ConfigError(f"cannot change {key} on resume: the resumed run would not be the one checkpointed; "
                              f"changeable: {', '.join(CHANGEABLE)}{did_you_mean(key, list(CHANGEABLE))}")
        if key in ("trainer.max_epochs", "trainer.max_steps") and _planned_over_run(cfg):
            raise ConfigError(f"cannot change {key} on resume: scheduler={choices.get('scheduler')} was planned over "
                              "the run's original length")
        check_type(key, current if current != "<missing>" else None, value)
        OmegaConf.update(cfg, key, value, merge=False)
        applied.append(o.input_line)
    return applied


def _planned_over_run(cfg: Any) -> bool:
    """The run's schedule declares that its curve spans the run's length (cosine, one-cycle)."""
    target = OmegaConf.select(cfg, "scheduler._target_", default=None)
    return bool(target) and getattr(_locate(str(target)), "plans_run_length", False)


def resume_run(run_dir: Path, overrides: list[str], ckpt: Path | None = None) -> int:
    """Continue run_dir from ckpt (default: its checkpoints/last.ckpt)."""
    run = RunDir.existing(run_dir)
    ckpt = (ckpt or run.last_checkpoint).resolve()
    if not ckpt.is_file():
        raise ConfigError(f"nothing to resume in {run.path}: no checkpoints/last.ckpt (the run stopped before its "
                          "first checkpoint; start it again)")
    load_checkpoint(ckpt)  # a truncated, foreign or unsafe file is refused here, in one line
    run.remove_orphans()
    text = run.config_text()
    old_dir = OmegaConf.create(text).get("run_dir")
    if old_dir and str(old_dir) != str(run.path):  # the run directory was moved: its paths move with it
        text = text.replace(str(old_dir), str(run.path))
    cfg = OmegaConf.create(text)
    choices = dict(cfg.pop("choices", {}) or {})
    applied = apply_overrides(cfg, choices, overrides)
    check_loggers(cfg)  # the run's trackers: installed here, their server up (it continues their run, trackers.json)
    append_to_run_log(run.path)
    logging.getLogger("dlexp").info("resuming %s from %s%s", run.path, ckpt,
                                    f" with {' '.join(applied)}" if applied else "")
    execute(cfg, run.path, choices, applied, ckpt_path=ckpt)
    return 0


def sweep_jobs(sweep_dir: Path) -> list[list[str]]:
    """The jobs of a sweep as Hydra's basic sweeper made them: a preset's hydra.sweeper.params, then the command
    line's. A sweeper whose runs continue another way (an Optuna study) declares a resume_hint."""
    multirun = OmegaConf.load(sweep_dir / "multirun.yaml")
    hint = getattr(_locate(str(multirun.hydra.sweeper._target_)), "resume_hint", None)
    if hint:
        raise ConfigError(f"{sweep_dir} was swept by {multirun.hydra.sweeper._target_}: {hint}")
    params = [f"{key}={value}" for key, value in (multirun.hydra.sweeper.get("params") or {}).items()]
    task_overrides = params + list(multirun.hydra.overrides.task)
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task_overrides), None)
    return [job for batch in batches for job in batch]


def resume_sweep(sweep_dir: Path, overrides: list[str]) -> int:
    """Continue the unfinished jobs of a sweep, each in its own job directory, in a child process."""
    dlexp = [sys.executable, "-m", "dlexp"]
    failed = 0
    for num, job in enumerate(sweep_jobs(sweep_dir)):
        job_dir = RunDir(sweep_dir / str(num))
        if job_dir.status() == "completed":
            print(f"job {num}: completed, skipped")
            continue
        if job_dir.last_checkpoint.is_file():
            command = [*dlexp, "resume", str(job_dir.path), *overrides]
        else:  # never started, or stopped before its first checkpoint: run it from the start
            shutil.rmtree(job_dir.path, ignore_errors=True)
            command = [*dlexp, "train", *job, *overrides, f"hydra.run.dir={job_dir.path}"]
        print(f"job {num}: {' '.join(job)}", flush=True)
        code = subprocess.call(command)
        if code in (130, 143):  # interrupted again: the sweep stops, as it did the first time
            return code
        failed += code != 0
    print(f"\nsweep summary ({sweep_dir / 'summary.md'}):\n{to_markdown(write_summary(sweep_dir))}")
    print(f"multirun_dir: {sweep_dir.resolve()}")
    return 1 if failed else 0


def from_ckpt_path(value: str, output_dir: str, overrides: list[str]) -> int:
    """`dlexp train ... ckpt_path=last|FILE`: continue the latest run (last) or FILE's run, in its own directory."""
    if value == "last":
        runs = sorted(p for p in (Path(output_dir) / "runs").glob("*") if RunDir(p).last_checkpoint.is_file())
        if not runs:
            raise ConfigError(f"ckpt_path=last: no run with checkpoints/last.ckpt under {Path(output_dir) / 'runs'}")
        return resume_run(runs[-1], overrides)
    ckpt = Path(value)
    run_dir = ckpt.resolve().parent.parent
    if not is_run_dir(run_dir):
        raise ConfigError(f"ckpt_path={value}: not inside a dlexp run directory (expected RUN_DIR/checkpoints/*.ckpt)")
    return resume_run(run_dir, overrides, ckpt)


def main(args: list[str]) -> int:
    if not args or args[0].startswith("-") or "=" in args[0]:
        raise ConfigError(usage.RESUME.splitlines()[0])
    target, overrides = Path(args[0]), args[1:]
    if is_run_dir(target):
        return resume_run(target, overrides)
    if (target / "multirun.yaml").is_file():
        return resume_sweep(target, overrides)
    raise ConfigError(f"{target} is neither a dlexp run directory (config.yaml) nor a sweep directory (multirun.yaml)")
