"""Sweeps end to end: summary.csv/.md in the sweep directory, TensorBoard's hparams view, `dlexp compare`."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = ["trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2"]


def sweep_dir_of(result, cwd: Path) -> Path:
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("multirun_dir: "), f"{last!r}\n{result.stderr[-2000:]}"
    return cwd / last.removeprefix("multirun_dir: ")


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def hparams_experiment(logdir: Path):
    """The experiment TensorBoard's hparams plugin shows for a logdir, computed by the plugin's own backend."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    plugin = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, data_provider=provider))
    request = context.RequestContext()
    sessions = [run for run, tags in mux.PluginRunToTagToContent("hparams").items() if "_hparams_/session_start_info" in tags]
    return plugin.experiment_from_metadata(request, "", True, plugin.hparams_metadata(request, ""), []), sessions


@pytest.mark.slow
def test_two_by_two_sweep_summary_hparams_and_compare(run_dlexp, tmp_path):
    result = run_dlexp("train", "-m", "optimizer=sgd,adam", "regularizer=none,l2", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_dir_of(result, tmp_path)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]

    rows = summary_rows(sweep)
    assert len(rows) == 4
    for row in rows:  # every value as the job's own files have it
        job = sweep / row["job"]
        metrics = json.loads((job / "metrics.json").read_text())
        overrides = (job / "overrides.yaml").read_text()
        assert row["status"] == metrics["status"] == "completed"
        assert row["monitor"] == "val/acc"
        assert float(row["best"]) == pytest.approx(metrics["val/acc_best"])
        assert float(row["test/acc"]) == pytest.approx(metrics["test/acc"])
        assert float(row["test/loss"]) == pytest.approx(metrics["test/loss"])
        assert int(row["epochs"]) == metrics["epochs"] == 2
        assert float(row["wall_s"]) == pytest.approx(metrics["wall_s"])
        assert all(o in overrides for o in row["overrides"].split())
    bests = [float(r["best"]) for r in rows]
    assert bests == sorted(bests, reverse=True), "summary is not sorted best first"
    combos = {tuple(o for o in r["overrides"].split() if o.startswith(("optimizer=", "regularizer="))) for r in rows}
    assert combos == {(f"optimizer={o}", f"regularizer={r}") for o in ("sgd", "adam") for r in ("none", "l2")}
    markdown = (sweep / "summary.md").read_text()
    assert "| optimizer=sgd regularizer=l2 |" in markdown and "all runs: trainer.max_epochs=2" in markdown
    assert "sweep summary" in result.stdout

    experiment, sessions = hparams_experiment(sweep)  # one hparams table for the four runs
    assert len(sessions) == 4
    infos = {h.name: h for h in experiment.hparam_infos}
    assert {v.string_value for v in infos["optimizer/_target_"].domain_discrete.values} >= {"torch.optim.SGD", "torch.optim.Adam"}
    assert {"test/acc", "val/acc_best"} <= {m.name.tag for m in experiment.metric_infos}

    compared = run_dlexp("compare", str(sweep))
    assert compared.returncode == 0, compared.stderr
    assert compared.stdout.count("| completed |") == 4
    png = Path(compared.stdout.strip().splitlines()[-1].removeprefix("plot: "))
    png = png if png.is_absolute() else tmp_path / png
    assert png == sweep / "compare.png"
    image = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert image.shape[0] >= 400 and image.shape[1] >= 700
    assert image.std() > 5, "the plot is blank"

    two = run_dlexp("compare", str(sweep / "0"), str(sweep / "3"), "metric=val/loss", "out=two.png")
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("| completed |") == 2 and (tmp_path / "two.png").is_file()


@pytest.mark.slow
def test_failed_jobs_are_failed_rows_and_the_sweep_goes_on(run_dlexp, tmp_path):
    """A job whose data is missing (refused when it builds) and one that blows up (lr 1e30) are failed rows, last."""
    result = run_dlexp("train", "-m", "dataset=mnist,digits", "optimizer=sgd", "optimizer.lr=1e30,0.01", *TINY)
    assert result.returncode == 1
    sweep = sweep_dir_of(result, tmp_path)
    rows = summary_rows(sweep)
    assert [(r["job"], r["status"]) for r in rows] == [("3", "completed"), ("0", "failed"), ("1", "failed"),
                                                       ("2", "failed")]
    assert float(rows[0]["best"]) > 0 and all(r["best"] == "" for r in rows[1:])
    assert "dataset=mnist" in rows[1]["overrides"] and "MNIST" in json.loads((sweep / "0" / "metrics.json").read_text())["error"]


def test_compare_refuses_what_is_not_a_run(run_dlexp, tmp_path):
    result = run_dlexp("compare", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "neither a dlexp run directory" in result.stderr
