"""dlexp/engine/trackers.py and its hooks, without training: names, params, the run directory's tracker ids and
files, the reachability check and the missing-extra line (the end-to-end runs: tests/e2e/test_trackers_cli.py)."""
from __future__ import annotations

import http.server
import json
import logging
import signal
import socket
import threading

import pytest
from omegaconf import OmegaConf

from dlexp.config import checks
from dlexp.config.checks import check_loggers, check_overrides
from dlexp.config.compose import compose
from dlexp.engine import trackers
from dlexp.engine.rundir import RunDir
from dlexp.errors import ConfigError, RunInterrupted

needs_mlflow = pytest.mark.skipif(not trackers.installed("mlflow"),
                                  reason="mlflow is not installed: pip install 'dlexp[mlflow]'")


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def not_found_server():
    """A local HTTP server that answers 404 to everything: a server is there, if not MLflow's /health."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_flat_config_is_the_config_with_dotted_keys():
    config = {"optimizer": {"lr": 0.001, "_target_": "torch.optim.Adam"}, "model": {"hidden": [300, 100],
              "init_from": None}, "seed": 42, "empty": {}, "choices": {"hydra/launcher": "basic"}}
    assert trackers.flat_config(config) == {
        "optimizer.lr": "0.001", "optimizer._target_": "torch.optim.Adam", "model.hidden": "[300, 100]",
        "model.init_from": "null", "seed": "42", "empty": "{}", "choices.hydra/launcher": "basic"}
    assert trackers.flat_config({"a:b": {"c": True}}) == {"a_b.c": "true"}  # MLflow refuses ':' in keys


@pytest.mark.parametrize("choices, name", [({"experiment": "optimizers", "model": "mlp"}, "optimizers"),
                                           ({"experiment": None, "model": "convnet"}, "convnet"), ({}, "dlexp")])
def test_experiment_name_is_the_preset_else_the_model(choices, name):
    assert trackers.experiment_name({"choices": choices}) == name


def test_tracking_name_of_a_run_and_of_a_sweep_job(tmp_path):
    run = tmp_path / "runs" / "2026-12-05_07-00-00_abcdef"
    run.mkdir(parents=True)
    assert RunDir(run).tracking_name() == ("2026-12-05_07-00-00_abcdef", None)
    sweep = tmp_path / "multirun" / "2026-12-05_07-00-01_123456"
    (sweep / "3").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    assert RunDir(sweep / "3").tracking_name() == ("2026-12-05_07-00-01_123456/3", "2026-12-05_07-00-01_123456")


def test_tracker_ids_are_kept_per_tracker(tmp_path):
    folder = RunDir(tmp_path)
    assert folder.tracker_ids("mlflow") == {}
    folder.write_tracker_ids("mlflow", {"run_id": "abc", "tracking_uri": "http://x"})
    folder.write_tracker_ids("wandb", {"id": "w1"})
    assert folder.tracker_ids("mlflow") == {"run_id": "abc", "tracking_uri": "http://x"}
    assert folder.tracker_ids("wandb") == {"id": "w1"}
    assert json.loads((tmp_path / "trackers.json").read_text()).keys() == {"mlflow", "wandb"}


def test_tracked_files_are_config_metrics_and_the_pngs(tmp_path):
    for name in ["config.yaml", "metrics.json", "overrides.yaml", "train.log", "samples/epoch_001.png",
                 "samples/epoch_001.pt", "eval/fid/real_vs_fake.png", "checkpoints/last.ckpt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    names = [p.relative_to(tmp_path).as_posix() for p in RunDir(tmp_path).tracked_files()]
    assert names == ["config.yaml", "metrics.json", "samples/epoch_001.png", "eval/fid/real_vs_fake.png"]


def test_unreachable_names_the_reason_and_ignores_local_stores(not_found_server):
    assert "refused" in trackers.unreachable(f"http://127.0.0.1:{closed_port()}", timeout_s=2).lower()
    assert trackers.unreachable(not_found_server, timeout_s=2) is None  # it answered: a server is there
    assert trackers.unreachable("sqlite:////tmp/x.db", timeout_s=2) is None
    assert trackers.unreachable("file:./mlruns", timeout_s=2) is None


@needs_mlflow
def test_an_unreachable_required_server_is_refused_before_anything_runs():
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ConfigError, match=f"MLflow tracking server {uri} is not reachable") as e:
        check_overrides(["logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}"])
    assert "\n" not in str(e.value) and "logger.mlflow.required=false" in str(e.value)
    check_overrides(["logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "logger.mlflow.required=false"])
    check_overrides(["logger=mlflow"])  # the local store: nothing to reach


@needs_mlflow
def test_a_resumed_runs_config_is_checked_too():
    """dlexp resume checks the run's saved (resolved) config the same way."""
    uri = f"http://127.0.0.1:{closed_port()}"
    cfg = OmegaConf.create({"logger": {"mlflow": {"_target_": "dlexp.engine.trackers.MLflowTracker",
                                                  "tracking_uri": uri, "required": True, "timeout_s": 2.0}}})
    with pytest.raises(ConfigError, match=uri):
        check_loggers(cfg)


@pytest.mark.parametrize("logger, extra", [("mlflow", "mlflow"), ("[tensorboard,wandb]", "wandb")])
def test_a_missing_extra_is_one_line_with_its_pip_command(monkeypatch, logger, extra):
    monkeypatch.setattr(checks, "installed", lambda module: module not in ("mlflow", "wandb"))
    with pytest.raises(ConfigError) as e:
        check_overrides([f"logger={logger}"])
    assert str(e.value) == f"logger={extra} needs {extra}, which is not installed: pip install 'dlexp[{extra}]'"


def test_a_tracker_built_without_its_package_says_which_extra(monkeypatch, tmp_path):
    """`dlexp resume` of a run that used MLflow, on a machine without it: build fails with the pip line."""
    monkeypatch.setattr(trackers, "installed", lambda module: False)
    with pytest.raises(trackers.MissingExtra, match=r"pip install 'dlexp\[mlflow\]'"):
        trackers.MLflowTracker(run_dir=str(tmp_path), local_store=str(tmp_path / "mlflow"))
    with pytest.raises(trackers.MissingExtra, match=r"pip install 'dlexp\[wandb\]'"):
        trackers.WandbTracker(run_dir=str(tmp_path))


@needs_mlflow
def test_an_unreachable_server_not_required_is_declared_unavailable(tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    tracker = trackers.MLflowTracker(run_dir=str(tmp_path), local_store=str(tmp_path / "mlflow"), tracking_uri=uri,
                                     required=False, timeout_s=2)
    assert tracker.available is False  # build() drops it; the run trains without it
    with pytest.raises(trackers.TrackerUnreachable, match=uri):
        trackers.MLflowTracker(run_dir=str(tmp_path), local_store=str(tmp_path / "mlflow"), tracking_uri=uri,
                               timeout_s=2)


def test_the_default_store_is_an_sqlite_file_under_outputs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose(["logger=mlflow", f"paths.output_dir={tmp_path}/outputs"])
    assert cfg.logger.mlflow.tracking_uri is None
    assert trackers.local_store_uri(cfg.logger.mlflow.local_store) == \
        f"sqlite:///{tmp_path / 'outputs' / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")  # MLflow's own variable is honoured
    assert compose(["logger=mlflow"]).logger.mlflow.tracking_uri == "http://tracking.example:5000"


def test_logger_configs_name_their_tracker_classes():
    """Every logger file composes, and each tracker class declares what it requires."""
    for name, module in (("mlflow", "mlflow"), ("wandb", "wandb")):
        node = compose([f"logger={name}"]).logger[name]
        assert checks._declared(node, "requires") == (module, module)


@needs_mlflow
def test_mlflow_tracker_starts_reopens_ends_and_replaces_a_deleted_run(tmp_path, caplog):
    """In-process, on a local store: the run starts with the config as params and its id in trackers.json; an
    interrupted fit ends it KILLED; a new tracker for the same run directory reopens it; end_run finishes it; a run
    deleted meanwhile is replaced by a new one, with a warning."""
    run_dir, store = tmp_path / "runs" / "r1", str(tmp_path / "mlflow")
    run_dir.mkdir(parents=True)
    RunDir(run_dir).write_config({"optimizer": {"lr": 0.01}, "seed": 1}, {"model": "mlp", "experiment": None})
    first = trackers.MLflowTracker(run_dir=str(run_dir), local_store=store)
    run_id, client = first.run_id, first.experiment  # the run starts on first use
    assert RunDir(run_dir).tracker_ids("mlflow") == {"run_id": run_id, "experiment_id": first.experiment_id,
                                                     "tracking_uri": trackers.local_store_uri(store)}
    run = client.get_run(run_id)
    assert run.data.params == {"optimizer.lr": "0.01", "seed": "1", "choices.model": "mlp",
                               "choices.experiment": "null"}
    assert (run.info.run_name, client.get_experiment(run.info.experiment_id).name) == ("r1", "mlp")
    first.finalize("success")  # Lightning's, after fit: the run goes on
    assert client.get_run(run_id).info.status == "RUNNING"
    try:
        raise RunInterrupted(signal.SIGTERM)
    except RunInterrupted:
        first.finalize("failed")  # Lightning's, while the interruption is handled
    assert client.get_run(run_id).info.status == "KILLED"
    again = trackers.MLflowTracker(run_dir=str(run_dir), local_store=store)
    assert again.run_id == run_id and client.get_run(run_id).info.status == "RUNNING"
    again.end_run({"val/acc_best": 0.5, "global_step": 7, "status": "completed"})
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"val/acc_best": 0.5}
    assert [f.path for f in client.list_artifacts(run_id)] == ["config.yaml"]  # no metrics.json written here
    client.delete_run(run_id)
    with caplog.at_level(logging.WARNING, logger="dlexp"):
        third = trackers.MLflowTracker(run_dir=str(run_dir), local_store=store)
        assert third.run_id != run_id
    assert f"MLflow run {run_id} of {run_dir} is not in" in caplog.text
    assert RunDir(run_dir).tracker_ids("mlflow")["run_id"] == third.run_id


@needs_mlflow
def test_reopened_trackers_are_the_runs_own_and_a_server_gone_since_is_a_warning(tmp_path, caplog):
    """dlexp eval's trackers: only loggers with ids in trackers.json (TensorBoard and a tracker that never started are
    left out); a run whose MLflow server no longer answers is reopened without it, with a warning naming the URI."""
    uri = f"http://127.0.0.1:{closed_port()}"
    mlflow_node = {"_target_": "dlexp.engine.trackers.MLflowTracker", "run_dir": "/moved/away", "tracking_uri": uri,
                   "local_store": str(tmp_path / "mlflow"), "required": True, "timeout_s": 2}
    config = {"logger": {"tensorboard": {"_target_": "pytorch_lightning.loggers.TensorBoardLogger",
                                         "save_dir": str(tmp_path)}, "mlflow": mlflow_node}}
    run = RunDir(tmp_path)
    run.write_config(config, {"model": "mlp"})
    assert trackers.reopened(run) == []  # no ids: it never logged to MLflow (not required and unreachable, say)
    run.write_tracker_ids("mlflow", {"run_id": "abc", "experiment_id": "1", "tracking_uri": uri})
    with caplog.at_level(logging.WARNING, logger="dlexp"):
        assert trackers.reopened(run) == []
    assert "not sent to logger.mlflow" in caplog.text and uri in caplog.text
