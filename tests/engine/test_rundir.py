"""dlexp/engine/rundir.py's light readers for listings: finding run directories, a few entries of config.yaml read as
YAML reads them, when a run started; and the module stays light (no Hydra)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf, open_dict

from dlexp.config.compose import compose
from dlexp.engine.rundir import RunDir, find_run_dirs, top_level_entries

KEYS = ("monitor", "monitor_mode", "choices", "trainer", "seed")


@pytest.mark.parametrize("overrides", [[], ["model=mlp", "regularizer=[l2,dropout]"], ["experiment=dnn_mnist"],
                                       ["model=wgan_gp"], ["dataset=boston_housing", "model=boston_regressor"]])
def test_top_level_entries_equal_a_full_parse_of_a_real_config(tmp_path, overrides):
    """config.yaml as `dlexp train` writes it (resolved config + choices): the entries read alone are the whole
    file's, whichever path reads them (plain words, or PyYAML for a list of choices)."""
    cfg = compose([f"run_dir={tmp_path}", *overrides], return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    RunDir(tmp_path).write_config(OmegaConf.to_container(cfg, resolve=True), choices)
    whole = yaml.safe_load(RunDir(tmp_path).config_text())
    assert RunDir(tmp_path).config_entries(*KEYS) == {k: whole[k] for k in KEYS}
    assert RunDir(tmp_path).config_entries("monitor", "no_such_key") == {"monitor": whole["monitor"]}


def test_top_level_entries_of_odd_yaml():
    text = "# c\nmonitor: x\nother:\n- 1\n- 2\nchoices:\n  model: m\n"
    assert top_level_entries(text, ["other"]) == {"other": [1, 2]}
    assert top_level_entries("'monitor': [a,\n  b]\n", ["monitor"]) == {"monitor": ["a", "b"]}
    assert top_level_entries("- a\n- b\n", ["monitor"]) == {}
    with pytest.raises(yaml.YAMLError):
        top_level_entries("monitor: [\n", ["monitor"])


def test_find_run_dirs(tmp_path):
    """runs/<id>/ and multirun/<id>/<job>/, damaged ones (any file a run writes) included; a run directory's own
    folders, hidden folders and a sweep directory's own files are no runs."""
    for run in ("runs/r1", "runs/r2", "multirun/s/0", "multirun/s/1"):
        (tmp_path / run / "checkpoints" / "nested").mkdir(parents=True)
        (tmp_path / run / "config.yaml").write_text("seed: 1\n")
    (tmp_path / "runs" / "killed_early").mkdir()
    (tmp_path / "runs" / "killed_early" / "train.log").write_text("")
    (tmp_path / "runs" / "empty").mkdir()
    (tmp_path / "runs" / ".hidden").mkdir()
    (tmp_path / "runs" / ".hidden" / "metrics.json").write_text("{}")
    (tmp_path / "multirun" / "s" / "multirun.yaml").write_text("")
    found = [p.relative_to(tmp_path).as_posix() for p in find_run_dirs(tmp_path)]
    assert found == ["multirun/s/0", "multirun/s/1", "runs/killed_early", "runs/r1", "runs/r2"]
    assert find_run_dirs(tmp_path / "multirun" / "s" / "1") == [tmp_path / "multirun" / "s" / "1"]
    assert find_run_dirs(tmp_path / "nowhere") == []


def test_started_is_when_config_yaml_was_written(tmp_path):
    (tmp_path / "train.log").write_text("")
    os.utime(tmp_path / "train.log", (1000.0, 1000.0))
    assert RunDir(tmp_path).started() == 1000.0
    (tmp_path / "config.yaml").write_text("")
    os.utime(tmp_path / "config.yaml", (2000.0, 2000.0))
    assert RunDir(tmp_path).started() == 2000.0


def test_rundir_imports_no_hydra():
    code = "import sys, dlexp.engine.rundir; print(sorted(m for m in ('torch', 'hydra') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
