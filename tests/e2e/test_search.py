"""Optuna search, parallel and cluster launchers, optional extras: end to end with the installed `dlexp`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dlexp.config.compose import compose

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=5", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "logger=none"]


def sweep_dir_of(result, cwd: Path) -> Path:
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("multirun_dir: "), f"{last!r}\n{result.stderr[-3000:]}"
    return (cwd / last.removeprefix("multirun_dir: ")).resolve()


def job_metrics(sweep: Path) -> dict[Path, dict]:
    """metrics.json of every numbered job directory of a sweep."""
    return {job: json.loads((job / "metrics.json").read_text())
            for job in sorted(sweep.iterdir()) if job.is_dir() and job.name.isdigit()}


def load_study(tmp_path: Path):
    import optuna

    return optuna.load_study(study_name="convnet-digits", storage=f"sqlite:///{tmp_path / 'study.db'}")


@pytest.mark.slow
def test_optuna_search_scores_runs_by_their_monitor_and_a_stored_study_continues(run_dlexp, tmp_path):
    search = ["-m", "hparams_search=optuna", "hydra.sweeper.storage=sqlite:///study.db", *TINY]
    result = run_dlexp("train", *search, "hydra.sweeper.n_trials=3")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_dir_of(result, tmp_path)
    runs = job_metrics(sweep)
    assert [p.name for p in runs] == ["0", "1", "2"]
    assert all(m["status"] == "completed" for m in runs.values())

    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for trial in study.trials:  # the objective is the run's val/acc, the run used the sampled values
        run_dir = Path(trial.user_attrs["run_dir"]).resolve()
        assert trial.value == pytest.approx(runs[run_dir]["val/acc"])
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["optimizer"]["lr"] == pytest.approx(trial.params["optimizer.lr"])
        assert config["dataset"]["batch_size"] == trial.params["dataset.batch_size"]
        assert config["choices"]["optimizer"] == trial.params["optimizer"]
        assert 1e-4 <= trial.params["optimizer.lr"] <= 1e-1
    assert len({t.params["optimizer.lr"] for t in study.trials}) == 3

    best = max(m["val/acc"] for m in runs.values())
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["direction"] == "maximize" and results["n_trials"] == 3
    assert results["best_value"] == pytest.approx(best)
    assert runs[Path(results["best_run_dir"]).resolve()]["val/acc"] == pytest.approx(best)
    assert f"best val/acc {best:.4f}" in result.stdout

    # n_trials is the study's total: 2 trials to go, both launched at once in parallel joblib workers
    more = run_dlexp("train", *search, "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib",
                     "hydra.launcher.n_jobs=2")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "3 of 5 trials done" in more.stdout
    again = sweep_dir_of(more, tmp_path)
    assert again != sweep and [p.name for p in job_metrics(again)] == ["0", "1"]
    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    assert {Path(t.user_attrs["run_dir"]).resolve() for t in study.trials[3:]} == set(job_metrics(again))


@pytest.mark.slow
def test_submitit_local_launcher_runs_two_jobs_in_one_sweep(run_dlexp, tmp_path):
    result = run_dlexp("train", "-m", "hydra/launcher=submitit_local", "optimizer=adam,sgd", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_dir_of(result, tmp_path)
    runs = job_metrics(sweep)
    assert [p.name for p in runs] == ["0", "1"]  # both jobs in the launching process's sweep directory
    assert all(m["status"] == "completed" and m["epochs"] == 1 for m in runs.values())
    assert len(list((tmp_path / "outputs" / "multirun").iterdir())) == 1
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2  # each job ran in a process of its own, started by submitit


@pytest.mark.parametrize("overrides, message", [
    (["monitor=val/acc_typo"], "monitor 'val/acc_typo' is not a metric this run logs"),
    (["task=adversarial", "model=gan"], "an Optuna search optimizes the run's monitored metric"),
    (["optimizer=choice(adam,sgdd)"], "unknown optimizer 'sgdd'"),
])
def test_a_search_that_cannot_be_scored_or_run_stops_before_its_first_trial(run_dlexp, tmp_path, overrides, message):
    result = run_dlexp("train", "-m", "hparams_search=optuna", *overrides, *TINY)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert message in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_an_integration_not_installed_names_the_extra_to_install(run_dlexp, tmp_path):
    # a user without the extras: the modules they bring cannot be found
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'optuna' or name.startswith('hydra_plugins.hydra_'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n")
    for override, package, extra in (("hparams_search=optuna", "optuna", "sweep"),
                                     ("hydra/launcher=joblib", "hydra-joblib-launcher", "sweep"),
                                     ("hydra/launcher=slurm", "hydra-submitit-launcher", "slurm")):
        result = run_dlexp("train", "-m", override, env={"PYTHONPATH": str(hide)})
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [
            f"error: {override} needs {package}, which is not installed: pip install 'dlexp[{extra}]'"]


def test_slurm_preset_sets_partition_gpus_time_and_memory():
    launcher = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30"],
                       return_hydra_config=True).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.mem_gb) == ("gpu", 1, 30, 32)
