"""Optuna hyperparameter search as a Hydra sweeper: `dlexp train -m hparams_search=optuna`.

Each trial is one run of the sweep (its own job directory); its objective is the run's monitored metric
(`monitor`, maximized or minimized as `monitor_mode` says). The search space is Hydra's sweep grammar in
hydra.sweeper.params or on the command line: choice(a,b,c), interval(lo,hi), tag(log,interval(lo,hi)),
range(lo,hi,step); plain values are fixed. n_trials counts every finished trial of the study, so with a stored
study (hydra.sweeper.storage=sqlite:///optuna.db) a re-run runs only the trials still missing.

Written for Optuna >= 3 (hydra-optuna-sweeper 1.3 requires optuna < 3, which needs SQLAlchemy < 2). Hydra takes
sweepers only from the hydra_plugins namespace: dlexp/hydra_plugin/ is installed as hydra_plugins.dlexp, and
`hydra_plugins.dlexp.register()` announces it where Hydra's scan of that namespace cannot see it (editable installs).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.utils import instantiate
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from dlexp.io import atomic_write_text

DIRECTIONS = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}


class OptunaSweeper(Sweeper):
    """Asks Optuna for n_jobs trials at a time, launches them as one batch, tells it each run's monitored metric.

    A run that fails, or returns no finite value, is a failed trial (the search goes on); trials stopped by
    Ctrl-C are failed and marked `interrupted`, and a continued study runs them again.
    """

    # what `dlexp resume SWEEP_DIR` says instead of re-running jobs: a search continues through its storage
    resume_hint = ("run the same `dlexp train -m hparams_search=...` command with the same hydra.sweeper.storage "
                   "and study_name to continue it (docs/sweeps.md)")

    def __init__(self, sampler: DictConfig, direction: str, storage: str | None, study_name: str | None,
                 n_trials: int, n_jobs: int = 1, params: DictConfig | None = None) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"hydra.sweeper.direction must be one of {', '.join(DIRECTIONS)}, got '{direction}'")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError("hydra.sweeper.n_trials and n_jobs must be >= 1")
        self.sampler, self.direction = sampler, DIRECTIONS[direction]
        self.storage, self.study_name, self.n_trials, self.n_jobs = storage, study_name, n_trials, n_jobs
        self.params = params or {}
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        import optuna  # optional (pip install 'dlexp[sweep]'): imported when a search runs

        monitor = self.config.get("monitor")
        if not monitor:
            raise ValueError("an Optuna search optimizes the run's monitored metric: set monitor=... and monitor_mode")
        # the command line wins over hydra.sweeper.params for the same key
        lines = {o.get_key_element(): o for o in OverridesParser.create().parse_overrides(
            [f"{k}={v}" for k, v in self.params.items()] + list(arguments))}
        space = {key: self._distribution(o) for key, o in lines.items() if o.is_sweep_override()}
        fixed = [o.input_line for o in lines.values() if not o.is_sweep_override()]

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # dlexp prints each trial's run and the best one
        study = optuna.create_study(study_name=self.study_name, storage=self.storage, direction=self.direction,
                                    sampler=instantiate(self.sampler), load_if_exists=True)
        done = len(finished(study))
        if done and "seed" in self.sampler:  # a continued study: other draws than its first trials had
            study.sampler = instantiate(self.sampler, seed=(self.sampler.seed or 0) + done)
        print(f"optuna study '{study.study_name}' ({self.storage or 'in memory'}): {self.direction} {monitor}, "
              f"{done} of {self.n_trials} trials done", flush=True)
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [tuple(fixed + [f"{k}={v}" for k, v in t.params.items()]) for t in trials]
            try:
                returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            except BaseException:  # Ctrl-C, SIGTERM: not finished, so a continued study runs these again
                for trial in trials:
                    trial.set_user_attr("interrupted", True)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns):
                tell(study, trial, ret, monitor)
            done += len(trials)
        report(study, monitor, Path(self.config.hydra.sweep.dir), self.storage)

    def _distribution(self, override: Override) -> Any:
        """The Optuna distribution of a sweep override; an interval over an int key samples ints."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        key, value = override.get_key_element(), override.value()
        if override.is_choice_sweep() or override.is_range_sweep() and value.shuffle:
            choices = list(override.sweep_iterator(transformer=Transformer.encode))
            if not all(isinstance(c, (str, int, float, bool, type(None))) for c in choices):
                raise ValueError(f"{key}: Optuna chooses among plain values only, got {override.input_line}")
            return CategoricalDistribution(choices)
        if override.is_range_sweep():
            values = list(override.sweep_iterator())
            if all(isinstance(v, int) for v in values):
                return IntDistribution(min(values), max(values), step=abs(int(value.step)))
            return FloatDistribution(min(values), max(values), step=abs(value.step))
        if override.is_interval_sweep():
            log_scale = "log" in value.tags
            if isinstance(OmegaConf.select(self.config, key, default=None), int):
                return IntDistribution(int(value.start), int(value.end), log=log_scale)
            return FloatDistribution(value.start, value.end, log=log_scale)
        raise ValueError(f"{key}: not a search space Optuna can sample: {override.input_line}")


def finished(study: Any) -> list[Any]:
    """The trials that count toward n_trials: completed, pruned or failed, not interrupted."""
    return [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]


def tell(study: Any, trial: Any, ret: JobReturn, monitor: str) -> None:
    """Record a run's monitored metric as its trial's value; a run without a finite value is a failed trial."""
    from optuna.trial import TrialState

    if ret.hydra_cfg is not None:
        trial.set_user_attr("run_dir", str(ret.hydra_cfg.hydra.runtime.output_dir))
    value = ret._return_value if ret.status == JobStatus.COMPLETED else None  # .return_value re-raises a failure
    if isinstance(value, (int, float)) and math.isfinite(value):
        study.tell(trial, float(value))
        return
    if ret.status == JobStatus.FAILED:  # the task raised (a run that fails returns None)
        why = f"{type(ret._return_value).__name__}: {ret._return_value}"
    else:
        why = f"the run failed or logged no {monitor}"
    print(f"trial {trial.number} failed ({why}): {' '.join(ret.overrides)}", flush=True)
    study.tell(trial, state=TrialState.FAIL)


def report(study: Any, monitor: str, sweep_dir: Path, storage: str | None) -> dict[str, Any]:
    """Print the best trial and write optimization_results.yaml into the sweep directory."""
    from optuna.trial import TrialState

    trials = finished(study)
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "storage": storage,
                               "monitor": monitor, "direction": study.direction.name.lower(),
                               "n_trials": len(trials),
                               "n_completed": sum(t.state == TrialState.COMPLETE for t in trials)}
    if results["n_completed"]:
        best = study.best_trial
        results.update(best_value=best.value, best_params=best.params, best_trial=best.number,
                       best_run_dir=best.user_attrs.get("run_dir"))
        params = " ".join(f"{k}={v}" for k, v in best.params.items())
        print(f"best {monitor} {best.value:.4f}: trial {best.number} ({params}) in {results['best_run_dir']}",
              flush=True)
    else:
        print(f"no trial completed: no best {monitor}", flush=True)
    atomic_write_text(sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results)))
    return results
