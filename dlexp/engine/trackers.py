"""Outside experiment trackers: Lightning's MLflow and W&B loggers, run the dlexp way (docs/tracking.md).

Each names its run after the run directory (a sweep's job: `<sweep>/<job>`, with the sweep's name as a tag), files it
under the experiment preset (else the model), logs the resolved config.yaml, keeps its run id in the run directory
(trackers.json) so that `dlexp resume` continues the same run, and when the run completes logs its best values and
keeps config.yaml, metrics.json and the PNGs as artifacts; `dlexp eval` later reopens the same runs (reopened()).
What the rest of dlexp uses is declared here, not looked up by name: `requires` (the module and the dlexp extra that
brings it), `ids_key` (its entry in trackers.json), `preflight` (a check of the settings before anything runs),
`available` (False: a tracker that is not required and cannot be reached; the run goes on without
it) and `end_run(metrics)` (the run completed; Lightning's finalize ends a run only when it fails). mlflow and wandb
are optional extras: they are imported inside methods only, and this module loads without them.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra._internal.utils import _locate
from pytorch_lightning.loggers import MLFlowLogger, WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from dlexp.config.checks import installed
from dlexp.engine.instantiate import make
from dlexp.engine.rundir import RunDir, is_run_dir
from dlexp.errors import ConfigError, RunInterrupted

log = logging.getLogger("dlexp")
PARAM_KEY = re.compile(r"[^\w\-. /]")  # MLflow keys: letters, digits, _ - . space /


class MissingExtra(ConfigError):
    """A tracker whose package is not installed (`dlexp resume` of a run that used it, on another machine)."""


class TrackerUnreachable(ConfigError):
    """A required tracking server that does not answer: refused before training."""


def require(module: str, extra: str) -> None:
    if not installed(module):
        raise MissingExtra(f"{module} is not installed: pip install 'dlexp[{extra}]'")


def experiment_name(config: Mapping[str, Any]) -> str:
    """The experiment preset's name, else the model's (the choices in config.yaml)."""
    choices = config.get("choices") or {}
    return str(choices.get("experiment") or choices.get("model") or "dlexp")


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved config as flat string params, `optimizer.lr` -> '0.001' (lists and null written as JSON)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = PARAM_KEY.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping) and value:
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


def unreachable(uri: str, timeout_s: float) -> str | None:
    """Why an http(s) tracking server does not answer; None when it answers or the store is not a server."""
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:  # it answered (a proxy in front, no /health): a server is there
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", e))


def unreachable_message(uri: str, reason: str) -> str:
    return (f"MLflow tracking server {uri} is not reachable ({reason}): start it or fix logger.mlflow.tracking_uri, "
            "or set logger.mlflow.required=false to train without it")


def local_store_uri(folder: str) -> str:
    """The default store: an SQLite database in `folder` (MLflow 3 keeps the file store for old data only)."""
    return f"sqlite:///{Path(folder).expanduser().resolve() / 'mlflow.db'}"


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """One process at a time creates a local SQLite store or an experiment in it (parallel sweep jobs)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    folder = Path(uri.removeprefix("sqlite:///")).parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def reopened(run: RunDir) -> list[Any]:
    """The outside trackers a run logged to (config.yaml's loggers that have ids in its trackers.json), reopened on
    those ids so that results which come later (`dlexp eval`) land in the same tracker runs. One that cannot be
    reopened here (its extra missing, its server not answering) is skipped with a warning: the results are in the
    run directory anyway."""
    trackers = []
    for key, node in (run.config().get("logger") or {}).items():
        try:
            ids_key = getattr(_locate(str(node.get("_target_"))), "ids_key", None)
        except ImportError:  # not a tracker of this dlexp
            continue
        if ids_key is None or not run.tracker_ids(ids_key):
            continue
        try:
            trackers.append(make(f"logger.{key}", {**node, "run_dir": str(run.path)}))
        except ConfigError as e:
            log.warning("not sent to logger.%s: %s", key, e)
    return trackers


def ended_by() -> str:
    """How a failing fit ended, from the exception being handled: KILLED (Ctrl-C, SIGTERM) or FAILED."""
    return "KILLED" if isinstance(sys.exc_info()[1], (RunInterrupted, KeyboardInterrupt)) else "FAILED"


class MLflowTracker(MLFlowLogger):
    """Lightning's MLflow logger with dlexp's run names, config params, artifacts and resume (module docstring).

    tracking_uri: a server (`http://host:5000`) or any store MLflow takes; null: an SQLite store in `local_store`
    (artifacts in its artifacts/). required=false: a server that does not answer is skipped with a warning.
    """

    requires = ("mlflow", "mlflow")  # (module, dlexp extra)
    ids_key = "mlflow"

    def __init__(self, run_dir: str, local_store: str, tracking_uri: str | None = None,
                 experiment_name: str | None = None, required: bool = True, timeout_s: float = 5.0,
                 tags: dict[str, Any] | None = None, artifact_location: str | None = None) -> None:
        require(*self.requires)
        self.folder = RunDir(Path(run_dir).resolve())
        saved = self.folder.tracker_ids(self.ids_key)  # a resumed run: its MLflow run, where it lives
        uri = saved.get("tracking_uri") or tracking_uri or local_store_uri(local_store)
        if artifact_location is None and uri.startswith("sqlite:"):
            artifact_location = str(Path(local_store).expanduser().resolve() / "artifacts")
        name, sweep = self.folder.tracking_name()
        tags = {**(tags or {}), "dlexp.run_dir": str(self.folder.path), **({"dlexp.sweep": sweep} if sweep else {})}
        with store_lock(uri):
            super().__init__(experiment_name=experiment_name or "", run_name=name, tracking_uri=uri, tags=tags,
                             artifact_location=artifact_location, run_id=saved.get("run_id"))
        self.available = self._reachable(uri, required, timeout_s)

    @staticmethod
    def preflight(key: str, settings: Mapping[str, Any]) -> None:
        """Before anything runs: a required tracking server that does not answer is refused, naming its URI."""
        uri = settings.get("tracking_uri")
        reason = unreachable(uri, float(settings.get("timeout_s", 5.0))) if uri and settings.get("required") else None
        if reason:
            raise ConfigError(unreachable_message(uri, reason).replace("logger.mlflow.", f"logger.{key}."))

    @staticmethod
    def _reachable(uri: str, required: bool, timeout_s: float) -> bool:
        reason = unreachable(uri, timeout_s)
        if reason is None:
            return True
        if required:
            raise TrackerUnreachable(unreachable_message(uri, reason))
        log.warning("MLflow tracking server %s is not reachable (%s): training without it "
                    "(logger.mlflow.required=false)", uri, reason)
        return False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The MlflowClient; on first use the run starts (or, resumed, reopens) and the config is logged."""
        if not self._initialized:
            self._start_run()
        return self._mlflow_client

    def _start_run(self) -> None:
        config = self.folder.config() if is_run_dir(self.folder.path) else {}
        client = self._mlflow_client
        resumed = self._run_id is not None and self._reopen(self._run_id)
        if not resumed:
            self._run_id = None
            with store_lock(self._tracking_uri):
                self._experiment_id = self._experiment_for(self._experiment_name or experiment_name(config))
        MLFlowLogger.experiment.fget(self)  # Lightning's: a new run with our name and tags, or the saved one
        if resumed:
            client.update_run(self._run_id, status="RUNNING")
        else:
            self.folder.write_tracker_ids(self.ids_key, {"run_id": self._run_id, "experiment_id": self._experiment_id,
                                                     "tracking_uri": self._tracking_uri})
        known = client.get_run(self._run_id).data.params if resumed else {}
        self._log_params({k: v for k, v in flat_config(config).items() if k not in known})  # params never change

    def _reopen(self, run_id: str) -> bool:
        """The saved run is still there (not deleted) to continue."""
        from mlflow.exceptions import MlflowException

        try:
            run = self._mlflow_client.get_run(run_id)
        except MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            log.warning("MLflow run %s of %s is not in %s any more: starting a new one", run_id, self.folder.path,
                        self._tracking_uri)
            return False
        return True

    def _experiment_for(self, name: str) -> str:
        """The id of the experiment `name`, created when missing (another job may create it at the same time)."""
        from mlflow.exceptions import MlflowException

        client = self._mlflow_client
        found = client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage != "deleted":
            return found.experiment_id
        try:
            return client.create_experiment(name, artifact_location=self._artifact_location)
        except MlflowException:  # created by a parallel job of the sweep meanwhile
            return client.get_experiment_by_name(name).experiment_id

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        entries = [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
        for i in range(0, len(entries), 100):  # MLflow takes at most 100 params a batch
            self._mlflow_client.log_batch(self._run_id, params=entries[i:i + 100])

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Lightning calls this after fit and after test: only a failure ends the run here (FAILED, or KILLED when
        interrupted; `dlexp resume` reopens it). A completed run ends in end_run, once its files are written."""
        if status == "failed" and self._initialized:
            self._mlflow_client.set_terminated(self._run_id, ended_by())

    @rank_zero_only
    def end_run(self, metrics: dict[str, Any]) -> None:
        """The run completed: its best values as metrics, its files as artifacts, the MLflow run FINISHED."""
        client, run_id = self.experiment, self.run_id
        best = {k: v for k, v in metrics.items() if k.endswith("_best") and isinstance(v, float)}
        if best:
            self.log_metrics(best, step=metrics.get("global_step"))
        for path in self.folder.tracked_files():
            folder = path.parent.relative_to(self.folder.path).as_posix()
            client.log_artifact(run_id, str(path), None if folder == "." else folder)
        client.set_terminated(run_id, "FINISHED")


class WandbTracker(WandbLogger):
    """Lightning's W&B logger with dlexp's run names, config, files and resume (module docstring); the files go to
    the W&B run's files under dlexp/ (dlexp/config.yaml, dlexp/metrics.json, dlexp/samples/...).

    offline (default): no account and no network; the run is written under the run directory's wandb/, for a later
    `wandb sync RUN_DIR/wandb/offline-run-*` (a resumed run's attempts are synced into the same W&B run).
    """

    requires = ("wandb", "wandb")  # (module, dlexp extra)
    ids_key = "wandb"

    def __init__(self, run_dir: str, project: str | None = None, offline: bool = True, entity: str | None = None,
                 tags: list[str] | None = None, job_type: str | None = None) -> None:
        require(*self.requires)
        self.folder = RunDir(Path(run_dir).resolve())
        self.saved = self.folder.tracker_ids(self.ids_key)  # a resumed run: its W&B run id and project
        name, sweep = self.folder.tracking_name()
        super().__init__(name=name, save_dir=str(self.folder.path), offline=offline, id=self.saved.get("id"),
                         project=project, entity=entity, group=sweep, job_type=job_type,
                         tags=[*(tags or []), *([sweep] if sweep else [])] or None)
        self._wandb_init.pop("anonymous", None)  # Lightning passes it; wandb warns that it has no effect
        self.given_project = project

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The wandb Run; on first use it starts (or, resumed, continues under its id) and the config is logged."""
        if self._experiment is None:
            self._start_run()
        return self._experiment

    def _start_run(self) -> None:
        import wandb

        config = self.folder.config() if is_run_dir(self.folder.path) else {}
        if wandb.run is not None:  # left by an earlier job of this process that never reached its end: not ours
            wandb.run.finish(exit_code=1)
        project = self.saved.get("project") or self.given_project or experiment_name(config)
        self._wandb_init["project"] = self._project = project
        run = WandbLogger.experiment.fget(self)
        if not self.saved:
            self.folder.write_tracker_ids(self.ids_key, {"id": run.id, "project": project, "offline": self._offline})
        run.config.update(config, allow_val_change=True)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """After fit and test (Lightning) nothing ends; a failure finishes the W&B run with a non-zero exit code."""
        super().finalize(status)
        if status == "failed" and self._experiment is not None:
            self._experiment.finish(exit_code=130 if ended_by() == "KILLED" else 1)

    @rank_zero_only
    def end_run(self, metrics: dict[str, Any]) -> None:
        """The run completed: metrics.json's values as the run's summary, its files saved, the W&B run finished."""
        run = self.experiment
        run.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        files = Path(run.dir) / "dlexp"  # copies under dlexp/: files/config.yaml is W&B's own name for the config
        for path in self.folder.tracked_files():
            copy = files / path.relative_to(self.folder.path)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
            run.save(str(copy), base_path=run.dir, policy="now")
        run.finish(exit_code=0)
