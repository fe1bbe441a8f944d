"""logger=mlflow and logger=wandb through the installed `dlexp`, on tiny digits runs: against a real `mlflow server`
(SQLite backend store, started on 127.0.0.1 for this module) and MLflow's local default store, read back with MLflow's
client; W&B offline, read back from the files a later `wandb sync` uploads. Resume, sweeps, bad input."""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import dlexp_bin, run_dir_of

from dlexp.engine.trackers import installed

pytestmark = pytest.mark.slow
needs_mlflow = pytest.mark.skipif(not installed("mlflow"),
                                  reason="mlflow is not installed: pip install 'dlexp[mlflow]'")
needs_wandb = pytest.mark.skipif(not installed("wandb"), reason="wandb is not installed: pip install 'dlexp[wandb]'")
# a few batches of the bundled digits, no speed probe
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1", "threads=1", "channels_last=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dlexp_env(cwd: Path, **extra: str) -> dict[str, str]:
    """The environment without tracker settings (MLFLOW_*, WANDB_*), W&B's own folders in cwd."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_"))}
    return {**clean, "DLEXP_DATA_DIR": str(cwd / "data"), "WANDB_CONFIG_DIR": str(cwd / ".wandb-config"),
            "WANDB_CACHE_DIR": str(cwd / ".wandb-cache"), "WANDB_DATA_DIR": str(cwd / ".wandb-data"), **extra}


def dlexp(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed `dlexp` in cwd (dlexp_env)."""
    return subprocess.run([dlexp_bin(), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dlexp_env(cwd, **(env or {})))


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` with an SQLite backend store on a free local port; killed (its whole process group) after."""
    pytest.importorskip("mlflow", reason="mlflow is not installed: pip install 'dlexp[mlflow]'")
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'store.db'}",
               "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    log = open(folder / "server.log", "w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes: tracking only
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            assert process.poll() is None, (folder / "server.log").read_text()[-3000:]
            assert time.time() < deadline, f"no mlflow server: {(folder / 'server.log').read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def mlflow_ids(run_dir: Path) -> dict:
    return json.loads((run_dir / "trackers.json").read_text())["mlflow"]


def history(mlflow, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in mlflow.get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def served(server, tmp_path_factory):
    """A run of a preset on the server (with TensorBoard too), read back; then `dlexp resume` for one more epoch, and
    `dlexp eval` of the finished run."""
    cwd = tmp_path_factory.mktemp("served")
    run_dir = run_dir_of(ok(dlexp(cwd, "train", "experiment=optimizers", "optimizer=adam", "dataset=digits",
                                  "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={server}", *TINY)))
    mlflow, ids = client(server), mlflow_ids(run_dir)
    first = {"ids": ids, "run": mlflow.get_run(ids["run_id"]), "val_acc": history(mlflow, ids["run_id"], "val/acc"),
             "losses": history(mlflow, ids["run_id"], "train/loss_step"),
             "metrics": json.loads((run_dir / "metrics.json").read_text()),
             "artifacts": {f.path for f in mlflow.list_artifacts(ids["run_id"])}}
    resumed = ok(dlexp(cwd, "resume", str(run_dir), "trainer.max_epochs=2"))
    resumed_run = mlflow.get_run(ids["run_id"])
    ok(dlexp(cwd, "eval", str(run_dir)))
    return {"run_dir": run_dir, "first": first, "resumed": resumed, "resumed_run": resumed_run, "uri": server}


@needs_mlflow
def test_mlflow_run_on_a_real_server_has_name_params_metrics_and_artifacts(served, tmp_path):
    run_dir, run = served["run_dir"], served["first"]["run"]
    mlflow = client(served["uri"])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert mlflow.get_experiment(run.info.experiment_id).name == "optimizers"  # the preset's name
    params = run.data.params
    assert params["optimizer.lr"] == "0.001" and params["optimizer._target_"] == "torch.optim.Adam"
    assert params["choices.experiment"] == "optimizers" and params["model.hidden"] == "[300, 200, 100]"
    assert params["trainer.max_epochs"] == "1" and params["run_dir"] == str(run_dir)
    assert run.data.tags["dlexp.run_dir"] == str(run_dir) and "dlexp.sweep" not in run.data.tags
    assert [step for step, _ in served["first"]["losses"]] == [0, 1, 2]  # every logged step, at its step
    assert served["first"]["val_acc"][0][0] == 2 and "val/acc_best" in run.data.metrics
    assert run.data.metrics["test/acc"] == pytest.approx(served["first"]["metrics"]["test/acc"])
    assert served["first"]["artifacts"] == {"config.yaml", "metrics.json"}
    saved = Path(mlflow.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path)))
    assert "optimizers" in saved.read_text()
    assert any((run_dir / "tb").glob("events.out.tfevents.*"))  # the other logger of the list still logs


@needs_mlflow
def test_resume_continues_the_same_mlflow_run(served):
    run_dir, first = served["run_dir"], served["first"]
    mlflow = client(served["uri"])
    assert mlflow_ids(run_dir) == first["ids"]
    run = served["resumed_run"]
    assert run.info.run_id == first["ids"]["run_id"] and run.info.status == "FINISHED"
    val_acc = history(mlflow, run.info.run_id, "val/acc")
    assert val_acc[:1] == first["val_acc"] and [step for step, _ in val_acc] == [2, 5]  # epoch 2 after epoch 1
    assert [step for step, _ in history(mlflow, run.info.run_id, "train/loss_step")] == list(range(6))
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2


@needs_mlflow
def test_eval_of_a_finished_run_lands_in_the_same_mlflow_run(served, tmp_path):
    run_dir, first = served["run_dir"], served["first"]
    mlflow = client(served["uri"])
    runs = mlflow.search_runs([first["run"].info.experiment_id])
    assert [r.info.run_id for r in runs] == [first["ids"]["run_id"]]  # no second run, after resume and eval
    run = mlflow.get_run(first["ids"]["run_id"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.info.status == "FINISHED" and metrics["eval/acc"] == pytest.approx(run.data.metrics["eval/acc"])
    [(step, value)] = history(mlflow, run.info.run_id, "eval/acc")
    assert step == metrics["global_step"] and value == pytest.approx(metrics["eval/acc"])
    pngs = sorted(p.name for p in (run_dir / "eval").glob("*.png"))
    assert pngs and sorted(Path(f.path).name for f in mlflow.list_artifacts(run.info.run_id, "eval")) == pngs
    kept = Path(mlflow.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path)))
    assert json.loads(kept.read_text()) == metrics  # the artifact is metrics.json with the eval/ keys


@needs_mlflow
@needs_wandb
def test_a_sweep_logs_one_run_per_job_tagged_with_the_sweep(server, tmp_path):
    """Two jobs in one process, MLflow and W&B together: a run each, named <sweep>/<job>, the sweep as tag/group."""
    result = ok(dlexp(tmp_path, "train", "-m", "optimizer=adam,sgd", "logger=[mlflow,wandb]",
                      f"logger.mlflow.tracking_uri={server}", *TINY))
    sweep = Path(result.stdout.strip().splitlines()[-1].removeprefix("multirun_dir: "))
    mlflow = client(server)
    runs = [mlflow.get_run(mlflow_ids(sweep / job)["run_id"]) for job in ("0", "1")]
    assert [r.info.run_name for r in runs] == [f"{sweep.name}/0", f"{sweep.name}/1"]
    assert [r.data.tags["dlexp.sweep"] for r in runs] == [sweep.name] * 2
    assert [r.data.params["optimizer._target_"] for r in runs] == ["torch.optim.Adam", "torch.optim.SGD"]
    assert [r.info.status for r in runs] == ["FINISHED"] * 2
    for job in ("0", "1"):
        ids = json.loads((sweep / job / "trackers.json").read_text())["wandb"]
        (record,) = [r.run for r in wandb_records(sweep / job) if r.WhichOneof("record_type") == "run"]
        assert (record.run_id, record.display_name) == (ids["id"], f"{sweep.name}/{job}")
        assert record.run_group == sweep.name and sweep.name in record.tags


@needs_mlflow
@needs_wandb
def test_the_default_store_is_local_and_an_interrupted_run_is_resumed_into_the_same_runs(tmp_path):
    """No tracking URI: an SQLite store under outputs/mlflow. SIGTERM mid-run: the MLflow run is KILLED and the W&B
    run exits 130; `dlexp resume` reopens both and finishes them, with the VAE's sample grids as artifacts."""
    process = subprocess.Popen([dlexp_bin(), "train", "model=vae", "callbacks.samples.every_n_epochs=1",
                                "logger=[mlflow,wandb]", *TINY[1:], "trainer.max_epochs=1000"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dlexp_env(tmp_path))
    deadline = time.time() + 300
    while not list((tmp_path / "outputs" / "runs").glob("*/checkpoints/last.ckpt")):
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    ids = mlflow_ids(run_dir)
    assert ids["tracking_uri"] == f"sqlite:///{tmp_path / 'outputs' / 'mlflow' / 'mlflow.db'}"
    mlflow = client(ids["tracking_uri"])
    assert mlflow.get_run(ids["run_id"]).info.status == "KILLED"
    assert [r.exit.exit_code for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "exit"] == [130]
    done = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    ok(dlexp(tmp_path, "resume", str(run_dir), f"trainer.max_epochs={done + 2}"))  # at least one more epoch
    run = mlflow.get_run(ids["run_id"])
    assert (run.info.status, run.info.run_name) == ("FINISHED", run_dir.name)
    assert mlflow.get_experiment(run.info.experiment_id).name == "vae"  # no preset: the model's name
    assert run.data.params["choices.model"] == "vae" and mlflow_ids(run_dir) == ids
    assert len(mlflow.search_runs([run.info.experiment_id])) == 1
    assert (tmp_path / "outputs" / "mlflow" / "artifacts" / ids["run_id"] / "artifacts" / "metrics.json").is_file()
    grids = sorted(p.name for p in (run_dir / "samples").glob("*.png"))
    assert grids and sorted(Path(f.path).name for f in mlflow.list_artifacts(ids["run_id"], "samples")) == grids
    assert [r.exit.exit_code for r in wandb_records(run_dir, attempt=1) if r.WhichOneof("record_type") == "exit"] \
        == [0]
    files = sorted((run_dir / "wandb").glob("offline-run-*"))[1] / "files" / "dlexp"
    assert sorted(p.name for p in (files / "samples").glob("*.png")) == grids and (files / "config.yaml").is_file()


@needs_mlflow
def test_an_unreachable_server_fails_before_training_in_one_line(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = dlexp(tmp_path, "train", "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}", *TINY)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and uri in lines[0] and "logger.mlflow.required=false" in lines[0], result.stderr
    assert not (tmp_path / "outputs" / "runs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())


@needs_mlflow
def test_an_unreachable_server_not_required_warns_and_trains_without_it(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result = ok(dlexp(tmp_path, "train", "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}",
                      "logger.mlflow.required=false", *TINY))
    assert f"MLflow tracking server {uri} is not reachable" in result.stdout + result.stderr
    run_dir = run_dir_of(result)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert not (run_dir / "trackers.json").exists() and any((run_dir / "tb").iterdir())


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_missing_extra_is_one_line_with_the_pip_command(tmp_path, tracker):
    """With the package hidden from Python (a sitecustomize that refuses to find it), as on a machine without it."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n\nclass Hide:\n    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] == {tracker!r}:\n            raise ModuleNotFoundError(name)\n\n"
        "sys.meta_path.insert(0, Hide())\n")
    result = dlexp(tmp_path, "train", f"logger=[tensorboard,{tracker}]", *TINY,
                   env={"PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: logger={tracker} needs {tracker}, which is not installed: pip install 'dlexp[{tracker}]'"]


def wandb_records(run_dir: Path, attempt: int = 0) -> list:
    """The records of a W&B offline run file (run-<id>.wandb: W&B's LevelDB-style log of protobuf records), of the
    attempt-th offline run under run_dir/wandb (a resumed run has one per attempt, in start order)."""
    from wandb.proto import wandb_internal_pb2

    path = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))[attempt]
    data, block = path.read_bytes(), 32768
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), path
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the block's end
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(records: list) -> list[dict]:
    return [{item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
             for item in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    """An offline W&B run of 1 epoch, then `dlexp resume` for a second one, then `dlexp eval`."""
    pytest.importorskip("wandb", reason="wandb is not installed: pip install 'dlexp[wandb]'")
    cwd = tmp_path_factory.mktemp("wandb")
    run_dir = run_dir_of(ok(dlexp(cwd, "train", "logger=wandb", *TINY)))
    first = {"ids": json.loads((run_dir / "trackers.json").read_text())["wandb"], "records": wandb_records(run_dir),
             "metrics": json.loads((run_dir / "metrics.json").read_text())}
    resumed = ok(dlexp(cwd, "resume", str(run_dir), "trainer.max_epochs=2"))
    ok(dlexp(cwd, "eval", str(run_dir)))
    return {"run_dir": run_dir, "first": first, "resumed": resumed}


@needs_wandb
def test_wandb_offline_run_has_name_config_metrics_and_files(wandb_run):
    run_dir, records = wandb_run["run_dir"], wandb_run["first"]["records"]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.display_name, run.project) == (wandb_run["first"]["ids"]["id"], run_dir.name, "convnet")
    config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for item in r.config.update}
    assert config["optimizer"]["lr"] == 0.001 and config["choices"]["model"] == "convnet"
    steps = [row["trainer/global_step"] for row in wandb_history(records) if "train/loss_step" in row]
    assert steps == [0, 1, 2]
    summary = {item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
               for r in records if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    assert summary["status"] == "completed" and summary["test/acc"] == pytest.approx(
        wandb_run["first"]["metrics"]["test/acc"])
    folder = sorted((run_dir / "wandb").glob("offline-run-*"))[0]  # the first attempt's
    assert (folder / "files" / "dlexp" / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()
    assert (folder / "files" / "dlexp" / "metrics.json").is_file()


@needs_wandb
def test_wandb_resume_continues_the_same_run_id(wandb_run):
    run_dir, first = wandb_run["run_dir"], wandb_run["first"]
    assert json.loads((run_dir / "trackers.json").read_text())["wandb"] == first["ids"]
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 3 and all(p.name.endswith(f"-{first['ids']['id']}") for p in offline)  # train, resume, eval
    records = wandb_records(run_dir, attempt=1)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.display_name, run.project) == (first["ids"]["id"], run_dir.name, "convnet")
    steps = [row["trainer/global_step"] for row in wandb_history(records) if "train/loss_step" in row]
    assert steps == [3, 4, 5]  # the second epoch continues the first's steps


@needs_wandb
def test_eval_of_a_finished_run_continues_the_same_wandb_run(wandb_run):
    run_dir, first = wandb_run["run_dir"], wandb_run["first"]
    records = wandb_records(run_dir, attempt=2)  # the third offline run: dlexp eval's
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.display_name) == (first["ids"]["id"], run_dir.name)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = {item.nested_key[0] if item.nested_key else item.key: json.loads(item.value_json)
               for r in records if r.WhichOneof("record_type") == "summary" for item in r.summary.update}
    assert summary["eval/acc"] == pytest.approx(metrics["eval/acc"])
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [0]
    files = sorted((run_dir / "wandb").glob("offline-run-*"))[2] / "files" / "dlexp"
    pngs = sorted(p.name for p in (run_dir / "eval").glob("*.png"))
    assert pngs and sorted(p.name for p in (files / "eval").glob("*.png")) == pngs
