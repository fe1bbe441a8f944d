"""dlexp/commands/runs.py: rows of every status, damaged directories as rows, sorting, filters, the option grammar,
JSON, and no heavy import (run directories written here with dlexp's own RunDir writers)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dlexp.commands import runs
from dlexp.engine.rundir import RunDir
from dlexp.errors import ConfigError

CHOICES = {"experiment": None, "model": "convnet", "dataset": "digits", "optimizer": "adam"}


def make_run(path: Path, metrics: dict[str, Any] | None = None, monitor: str | None = "val/acc", mode: str = "max",
             choices: dict[str, Any] | None = None, overrides: list[str] | None = None, started: float | None = None,
             config: bool = True) -> Path:
    """A run directory as `dlexp train` leaves it: config.yaml (resolved config + choices), overrides.yaml and,
    once the attempt ended, metrics.json."""
    run = RunDir(path)
    path.mkdir(parents=True)
    if config:
        run.write_config({"seed": 42, "model": {"_target_": "x.Net", "hidden": [16]}, "monitor": monitor,
                          "monitor_mode": mode}, choices or CHOICES)
    run.write_overrides(overrides or [])
    if metrics is not None:
        run.write_metrics(metrics)
    if started is not None:
        first = path / ("config.yaml" if config else "overrides.yaml")
        os.utime(first, (started, started))
    return path


def completed(acc: float, epochs: int = 3) -> dict[str, Any]:
    return {"status": "completed", "val/acc": acc, "val/acc_best": acc, "test/acc": acc - 0.01, "test/loss": 0.3,
            "epochs": epochs, "global_step": 21 * epochs, "wall_s": 12.5}


@pytest.fixture
def outputs(tmp_path) -> Path:
    """outputs/ with a completed, an interrupted, a failed and an unfinished run, and a sweep of two jobs."""
    root, now = tmp_path / "outputs", time.time()
    make_run(root / "runs" / "2027-01-15_08-00-00_aaaaaa", completed(0.9), started=now - 4000)
    make_run(root / "runs" / "2027-01-15_09-00-00_bbbbbb", {"status": "interrupted", "wall_s": 3.0,
             "resume": "dlexp resume /elsewhere"}, started=now - 3000, overrides=["trainer.max_epochs=30"])
    make_run(root / "runs" / "2027-01-15_10-00-00_cccccc", {"status": "failed", "wall_s": 1.0, "error": "nan loss"},
             choices={**CHOICES, "model": "mlp"}, overrides=["model=mlp"], started=now - 2000)
    make_run(root / "runs" / "2027-01-15_11-00-00_dddddd", None, started=now - 1000)
    sweep = root / "multirun" / "2027-01-15_07-00-00_eeeeee"
    make_run(sweep / "0", completed(0.7, epochs=1), choices={**CHOICES, "model": "mlp"}, started=now - 5000)
    make_run(sweep / "1", completed(0.95, epochs=2), started=now - 4500)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / "summary.md").write_text("| job |\n")
    return root


def rows_of(*args: str, capsys) -> list[dict[str, Any]]:
    assert runs.main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_run_and_sweep_job_newest_first(outputs, capsys):
    rows = rows_of(str(outputs), capsys=capsys)
    assert [r["name"] for r in rows] == ["2027-01-15_11-00-00_dddddd", "2027-01-15_10-00-00_cccccc",
                                         "2027-01-15_09-00-00_bbbbbb", "2027-01-15_08-00-00_aaaaaa",
                                         "2027-01-15_07-00-00_eeeeee/1", "2027-01-15_07-00-00_eeeeee/0"]
    assert [r["status"] for r in rows] == ["unfinished", "failed", "interrupted", "completed", "completed",
                                           "completed"]
    done = rows[3]
    assert (done["monitor"], done["best"], done["test_metric"], done["test"]) == ("val/acc", 0.9, "test/acc", 0.89)
    assert (done["model"], done["dataset"], done["experiment"], done["epochs"], done["wall_s"]) == (
        "convnet", "digits", None, 3, 12.5)
    interrupted = rows[2]
    assert interrupted["resume"] == f"dlexp resume {outputs.resolve() / 'runs' / interrupted['name']}"
    assert interrupted["overrides"] == ["trainer.max_epochs=30"] and interrupted["best"] is None
    assert rows[1]["error"] == "nan loss" and rows[1]["model"] == "mlp"
    assert all(r["reason"] is None for r in rows) and all(Path(r["path"]).is_absolute() for r in rows)


def test_table_counts_statuses_and_prints_resume_commands(outputs, capsys):
    assert runs.main([str(outputs)]) == 0
    out = capsys.readouterr().out
    header, *lines = out.splitlines()
    assert header.split() == list(runs.COLUMNS)
    assert "val/acc 0.9000" in out and "test/acc 0.8900" in out and "12s" in out
    assert "6 runs under" in out and "3 completed" in out and "1 interrupted" in out
    assert f"  dlexp resume {outputs.resolve() / 'runs' / '2027-01-15_09-00-00_bbbbbb'}" in lines


def test_sort_and_filters(outputs, capsys):
    by_best = rows_of(str(outputs), "sort=best", capsys=capsys)
    assert [r["best"] for r in by_best][:3] == [0.95, 0.9, 0.7]
    assert [r["best"] for r in rows_of(str(outputs), "sort=best", "reverse=true", capsys=capsys)][:3] == [0.7, 0.9,
                                                                                                          0.95]
    assert {r["status"] for r in rows_of(str(outputs), "status=completed", capsys=capsys)} == {"completed"}
    assert len(rows_of(str(outputs), "status=failed,interrupted", capsys=capsys)) == 2
    assert {r["name"] for r in rows_of(str(outputs), "model=mlp", capsys=capsys)} == {
        "2027-01-15_10-00-00_cccccc", "2027-01-15_07-00-00_eeeeee/0"}
    assert rows_of(str(outputs), "runs.model=mlp", "status=completed", capsys=capsys)[0]["best"] == 0.7
    assert [r["epochs"] for r in rows_of(str(outputs), "sort=epochs", capsys=capsys)][:3] == [3, 2, 1]
    assert runs.main([str(outputs), "model=resnet"]) == 0  # a model no run has: an empty listing, not an error
    assert "none of the 6 runs" in capsys.readouterr().out


def test_best_first_follows_each_runs_monitor_mode(tmp_path, capsys):
    make_run(tmp_path / "a", {"status": "completed", "val/loss_best": 0.2}, monitor="val/loss", mode="min")
    make_run(tmp_path / "b", {"status": "completed", "val/loss_best": 0.1}, monitor="val/loss", mode="min")
    assert [r["name"] for r in rows_of(str(tmp_path), "sort=best", capsys=capsys)] == ["b", "a"]


@pytest.mark.parametrize("damage, reason", [
    (lambda d: (d / "metrics.json").write_text('{"status": "compl'), "metrics.json: not JSON"),
    (lambda d: (d / "metrics.json").write_text(""), "metrics.json: empty file"),
    (lambda d: (d / "metrics.json").write_bytes(b"\x80\xff\x00"), "metrics.json: not text"),
    (lambda d: (d / "metrics.json").write_text("[1, 2]"), "metrics.json: not a JSON object"),
    (lambda d: (d / "overrides.yaml").write_text("- a\n b: [\n"), "overrides.yaml: not YAML"),
    (lambda d: (d / "config.yaml").write_text("monitor: [\n"), "config.yaml: not YAML"),
    (lambda d: [(d / n).unlink() for n in ("config.yaml", "metrics.json")], "no metrics.json or config.yaml"),
])
def test_a_damaged_run_is_an_unreadable_row(tmp_path, capsys, damage, reason):
    make_run(tmp_path / "runs" / "good", completed(0.8))
    damage(make_run(tmp_path / "runs" / "bad", completed(0.8)))
    rows = {r["name"]: r for r in rows_of(str(tmp_path), capsys=capsys)}
    assert rows["good"]["status"] == "completed" and rows["bad"]["status"] == "unreadable"
    assert rows["bad"]["reason"].startswith(reason)
    assert runs.main([str(tmp_path)]) == 0
    assert f"  bad: {reason}" in capsys.readouterr().out


def test_an_unreadable_file_is_a_row_too(tmp_path, capsys, monkeypatch):
    """Permission denied (tests may run as root, who reads anything: the read is made to fail)."""
    bad = make_run(tmp_path / "bad", completed(0.8)) / "metrics.json"
    read_text = Path.read_text

    def refuse(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == bad:
            raise PermissionError(13, "Permission denied")
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    [row] = rows_of(str(tmp_path), capsys=capsys)
    assert (row["status"], row["reason"]) == ("unreadable", "metrics.json: Permission denied")


def test_a_sweep_job_that_failed_before_it_was_built(tmp_path, capsys):
    """No config.yaml (dlexp/engine/execute.py writes only overrides.yaml and metrics.json): model from overrides."""
    make_run(tmp_path / "sweep" / "3", {"status": "failed", "error": "bad combination"}, config=False,
             overrides=["model=mlp", "dataset=mnist", "+experiment=optimizers"])
    [row] = rows_of(str(tmp_path), capsys=capsys)
    assert (row["name"], row["status"], row["model"], row["dataset"], row["experiment"]) == (
        "sweep/3", "failed", "mlp", "mnist", "optimizers")


@pytest.mark.parametrize("args, message", [
    (["sort=bset"], "runs option sort: no column 'bset' (did you mean 'best'?)"),
    (["status=complete"], "runs option status: no status 'complete' (did you mean 'completed'?)"),
    (["model=convent"], "runs option model: no model 'convent' (did you mean 'convnet'?)"),
    (["stauts=failed"], "unknown runs option 'stauts' (did you mean 'status'?)"),
    (["reverse=maybe"], "runs option reverse expects true or false, got 'maybe'"),
    (["--jsn"], "unknown flag '--jsn' (did you mean '--json'?)"),
    (["second_dir"], "one DIR at most, got 2"),
])
def test_bad_input_is_a_config_error(outputs, args, message):
    with pytest.raises(ConfigError) as error:
        runs.main([str(outputs), *args])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_missing_directory_is_a_config_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no directory: .*nowhere"):
        runs.main([str(tmp_path / "nowhere")])
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        runs.main([str(tmp_path / "file")])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no directory: outputs here"):
        runs.main([])


def test_main_test_metric():
    assert runs.main_test_metric({"test/acc": 0.9, "test/loss": 0.3}, "val/loss") == "test/loss"
    assert runs.main_test_metric({"test/acc": 0.9, "test/loss": 0.3}, None) == "test/acc"
    assert runs.main_test_metric({"test/mae": 2.0, "test/loss": 5.0}, "val/mae") == "test/mae"
    assert runs.main_test_metric({"test/bpc": 2.1, "test/loss": 1.4}, "val/x") == "test/bpc"
    assert runs.main_test_metric({"train/d_loss": 0.1, "eval/fid": 12.0}, None) == "eval/fid"
    assert runs.main_test_metric({"train/d_loss": 0.1}, None) is None


def test_durations():
    assert [runs.duration(s) for s in (1.234, 45, 185, 7380, None)] == ["1.2s", "45s", "3m05s", "2h03m", ""]
    assert [runs.age(s) for s in (5, 300, 7200, 86400, 3 * 86400, None)] == ["5s", "5m", "2h", "24h", "3d", ""]


def test_listing_imports_no_torch_lightning_or_hydra(outputs):
    code = ("import sys, io, contextlib\nfrom dlexp.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    codes = [main(['runs', {str(outputs)!r}]), main(['runs', {str(outputs)!r}, '--json', 'sort=best'])]\n"
            "print(codes, sorted(m for m in ('torch', 'pytorch_lightning', 'lightning', 'hydra') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[0, 0] []"
