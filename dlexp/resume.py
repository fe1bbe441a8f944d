"""`dlexp resume RUN_DIR|SWEEP_DIR [key=value ...]`: continue a run in its own directory from checkpoints/last.ckpt.

The run's saved config is used as it is; only keys that do not change what the run computes up to the
checkpoint (how long it trains, how often it logs or checkpoints) may be overridden. A sweep directory
resumes its unfinished jobs one by one and skips the completed ones.
"""
from __future__ import annotations

import json
import logging.config
import subprocess
import sys
from pathlib import Path
from typing import Any

from dlexp.config import ConfigError, conf_dir, did_you_mean

CHANGEABLE = (
    "trainer.max_epochs", "trainer.max_steps", "trainer.min_epochs", "trainer.log_every_n_steps",
    "trainer.limit_val_batches", "trainer.limit_test_batches", "callbacks.progress.refresh_rate",
    "callbacks.samples.every_n_epochs", "callbacks.checkpoint.every_n_train_steps",
)


def status(run_dir: Path) -> str | None:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()).get("status") if path.is_file() else None


def apply_overrides(cfg: Any, choices: dict[str, str], overrides: list[str]) -> list[str]:
    """Apply the changeable overrides to the run's config; an override repeating the run's value is accepted."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from dlexp.config import _check_type

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
        planned = str(OmegaConf.select(cfg, "scheduler._target_", default="")).rsplit(".", 1)[-1]
        if key in ("trainer.max_epochs", "trainer.max_steps") and planned in ("cosine", "onecycle"):
            raise ConfigError(f"cannot change {key} on resume: scheduler={planned} was planned over the run's "
                              "original length")
        _check_type(key, current if current != "<missing>" else None, value)
        OmegaConf.update(cfg, key, value, merge=False)
        applied.append(o.input_line)
    return applied


def setup_logging(run_dir: Path) -> None:
    """The console and train.log handlers a Hydra run has, appending to the run's train.log."""
    import yaml

    job_logging = yaml.safe_load((conf_dir() / "hydra" / "default.yaml").read_text())["job_logging"]
    job_logging["handlers"]["file"]["filename"] = str(run_dir / "train.log")
    job_logging["handlers"]["file"]["mode"] = "a"
    logging.config.dictConfig(job_logging)


def resume_run(run_dir: Path, overrides: list[str], ckpt: Path | None = None) -> int:
    """Continue run_dir from ckpt (default: its checkpoints/last.ckpt)."""
    from omegaconf import OmegaConf

    from dlexp.checkpoint import load_checkpoint
    from dlexp.train import execute

    run_dir = run_dir.resolve()
    ckpt = (ckpt or run_dir / "checkpoints" / "last.ckpt").resolve()
    if not ckpt.is_file():
        raise ConfigError(f"nothing to resume in {run_dir}: no checkpoints/last.ckpt (the run stopped before its "
                          "first checkpoint; start it again)")
    load_checkpoint(ckpt)  # a truncated, foreign or unsafe file is refused here, in one line
    for orphan in [*run_dir.glob(".*.tmp"), *(run_dir / "checkpoints").glob(".*.tmp")]:
        orphan.unlink()  # a write the kill interrupted: its target still holds the previous, complete file
    text = (run_dir / "config.yaml").read_text()
    old_dir = OmegaConf.create(text).get("run_dir")
    if old_dir and str(old_dir) != str(run_dir):  # the run directory was moved: its paths move with it
        text = text.replace(str(old_dir), str(run_dir))
    cfg = OmegaConf.create(text)
    choices = dict(cfg.pop("choices", {}) or {})
    applied = apply_overrides(cfg, choices, overrides)
    setup_logging(run_dir)
    logging.getLogger("dlexp").info("resuming %s from %s%s", run_dir, ckpt,
                                    f" with {' '.join(applied)}" if applied else "")
    execute(cfg, run_dir, choices, applied, ckpt_path=ckpt)
    return 0


def resume_sweep(sweep_dir: Path, overrides: list[str]) -> int:
    """Continue the unfinished jobs of a sweep, each in its own job directory, in a child process."""
    import shutil

    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    multirun = OmegaConf.load(sweep_dir / "multirun.yaml")
    if "Optuna" in str(multirun.hydra.sweeper.get("_target_", "")):
        raise ConfigError(f"{sweep_dir} is an Optuna search: run the same `dlexp train -m hparams_search=...` command "
                          "with the same hydra.sweeper.storage and study_name to continue it (docs/sweeps.md)")
    # the jobs as Hydra's basic sweeper made them: a preset's hydra.sweeper.params, then the command line's
    params = [f"{key}={value}" for key, value in (multirun.hydra.sweeper.get("params") or {}).items()]
    task_overrides = params + list(multirun.hydra.overrides.task)
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task_overrides), None)
    jobs = [job for batch in batches for job in batch]
    dlexp = [sys.executable, "-m", "dlexp"]
    failed = 0
    for num, job in enumerate(jobs):
        job_dir = sweep_dir / str(num)
        state = status(job_dir)
        if state == "completed":
            print(f"job {num}: completed, skipped")
            continue
        if (job_dir / "checkpoints" / "last.ckpt").is_file():
            command = [*dlexp, "resume", str(job_dir), *overrides]
        else:  # never started, or stopped before its first checkpoint: run it from the start
            shutil.rmtree(job_dir, ignore_errors=True)
            command = [*dlexp, "train", *job, *overrides, f"hydra.run.dir={job_dir}"]
        print(f"job {num}: {' '.join(job)}", flush=True)
        code = subprocess.call(command)
        if code in (130, 143):  # interrupted again: the sweep stops, as it did the first time
            return code
        failed += code != 0
    from dlexp.sweep import to_markdown, write_summary

    print(f"\nsweep summary ({sweep_dir / 'summary.md'}):\n{to_markdown(write_summary(sweep_dir))}")
    print(f"multirun_dir: {sweep_dir}")
    return 1 if failed else 0


def from_ckpt_path(value: str, output_dir: str, overrides: list[str]) -> int:
    """`dlexp train ... ckpt_path=last|FILE`: continue the latest run (last) or FILE's run, in its own directory."""
    if value == "last":
        runs = sorted(p for p in (Path(output_dir) / "runs").glob("*") if (p / "checkpoints" / "last.ckpt").is_file())
        if not runs:
            raise ConfigError(f"ckpt_path=last: no run with checkpoints/last.ckpt under {Path(output_dir) / 'runs'}")
        return resume_run(runs[-1], overrides)
    ckpt = Path(value)
    run_dir = ckpt.resolve().parent.parent
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"ckpt_path={value}: not inside a dlexp run directory (expected RUN_DIR/checkpoints/*.ckpt)")
    return resume_run(run_dir, overrides, ckpt)


def main(args: list[str]) -> int:
    if not args or args[0].startswith("-") or "=" in args[0]:
        raise ConfigError("usage: dlexp resume RUN_DIR|SWEEP_DIR [key=value ...]")
    target, overrides = Path(args[0]), args[1:]
    if (target / "config.yaml").is_file():
        return resume_run(target, overrides)
    if (target / "multirun.yaml").is_file():
        return resume_sweep(target, overrides)
    raise ConfigError(f"{target} is neither a dlexp run directory (config.yaml) nor a sweep directory (multirun.yaml)")
