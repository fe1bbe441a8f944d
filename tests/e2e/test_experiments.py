"""The experiment presets (conf/experiment/, every file found at collection time): each passes the checks and
declares its sweep, composes and runs a few batches, sweeps expand to the right jobs, +scale=full restores the
notes' budget, and `dlexp list experiment` names each one's seed section."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from PIL import Image

from conftest import needs_ecg, run_dir_of, write_cifar, write_keras_text
from dlexp.config.checks import check_overrides
from dlexp.config.compose import compose, conf_dir, groups
from dlexp.errors import ConfigError

# every preset: a new file in conf/experiment/ is covered without touching this module
PRESETS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def jobs_of(params: dict) -> int:
    """How many jobs a sweep over hydra.sweeper.params runs: the product of each key's value count."""
    overrides = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return math.prod(len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1 for o in overrides)


def sweep_jobs(name: str) -> int:
    """The jobs `dlexp train experiment=NAME` runs (1: a single run), read from the preset's YAML (or the
    preset's it builds on) without composing: test_every_preset_passes_the_checks holds it to Hydra's."""
    node = yaml.safe_load((conf_dir() / "experiment" / f"{name}.yaml").read_text()) or {}
    params = ((node.get("hydra") or {}).get("sweeper") or {}).get("params")
    if params:
        return jobs_of(params)
    bases = [d for d in node.get("defaults") or [] if isinstance(d, str) and d != "_self_"]
    return sweep_jobs(bases[-1]) if bases else 1


# preset -> the jobs its sweep runs (1: a single run)
JOBS = {name: sweep_jobs(name) for name in PRESETS}
# presets that are not from the notes: no seed section to name
NOT_FROM_THE_NOTES = {"fashion_speedrun"}
# a stand-in for each key a preset lists under `required:` (never used: the checks build and run nothing)
STAND_INS = {"model.init_from": "/nonexistent/reuse_pretrain_run"}
# presets that run the notes' own budget on a CPU in minutes: +scale=full leaves them as they are
# (fashion_speedrun is not from the notes: its budget is the CPU speedrun's)
NOTES_BUDGET = {"ae_pca", "softmax_fashion", "fnn_fashion", "cnn_fashion", "fashion_speedrun", "imdb_embedding"}
# presets on the real ECG recording (Debian's python3-scipy): skipped with the reason where it is absent
NEEDS_ECG = {"ecg_gans"}
# a few batches of one epoch, on small fake copies of MNIST, Fashion-MNIST, CIFAR-10, IMDB and Reuters in the data dir
DEBUG = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", "logger=none"]


@pytest.fixture
def data_dir(idx_dir):
    write_cifar(idx_dir, n=20, n_test=10)
    write_keras_text(idx_dir)  # imdb.npz, reuters.npz (Boston: mlxtend's table; text: pydoc's; ECG: scipy's)
    return idx_dir


def sweep_dir(result, cwd: Path) -> Path:
    """The sweep directory named on the last line of a multirun's stdout (relative to the run's cwd)."""
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("multirun_dir: "), f"not a multirun: {last!r}\n{result.stderr[-3000:]}"
    return cwd / last.removeprefix("multirun_dir: ")


def summary(result, cwd: Path) -> list[dict[str, str]]:
    with (sweep_dir(result, cwd) / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_every_preset_is_listed_with_its_seed_section(run_dlexp):
    assert set(groups()["experiment"]) >= set(PRESETS)
    result = run_dlexp("list", "experiment")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    for name in sorted(set(PRESETS) - NOT_FROM_THE_NOTES):
        assert "seeds/00" in lines[name], f"{name}: no seed section in its description: {lines[name]}"


@pytest.mark.slow
def test_single_presets_run_a_few_batches(run_dlexp, data_dir, tmp_path):
    """All single-run presets in one multirun (one process): every job completes; the 2-d code and latent map
    plots of ae_pca and conv_vae are drawn from their runs."""
    single = [name for name, jobs in JOBS.items() if jobs == 1]
    result = run_dlexp("train", "-m", f"experiment={','.join(single)}", *DEBUG, timeout=900)
    rows = summary(result, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    job = {row["overrides"].split()[0].removeprefix("experiment="): row["job"] for row in rows}
    assert sorted(job) == sorted(single)
    failed = [row["overrides"] for row in rows if row["status"] != "completed"]
    assert not failed, failed
    sweep = sweep_dir(result, tmp_path)
    job = {name: sweep / number for name, number in job.items()}

    codes = run_dlexp("sample", str(job["ae_pca"]), "mode=codes")
    assert codes.returncode == 0, codes.stderr
    assert Image.open(job["ae_pca"] / "samples" / "codes.png").size[0] > 100
    grid = run_dlexp("sample", str(job["conv_vae"]), "mode=latent_map", "steps=5")
    assert grid.returncode == 0, grid.stderr
    png = job["conv_vae"] / "samples" / "sample_latent_map_n25_seed0.png"
    assert Image.open(png).size[0] >= 5 * 28  # 5 x 5 decoded images
    vae_codes = run_dlexp("sample", str(job["conv_vae"]), "mode=codes")  # a VAE: its posterior means
    assert vae_codes.returncode == 0, vae_codes.stderr
    assert (job["conv_vae"] / "samples" / "codes.png").is_file()
    refused = run_dlexp("sample", str(job["vae_mnist"]), "mode=latent_map")
    assert refused.returncode == 2 and "2-d latent" in refused.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(name, marks=[needs_ecg] if name in NEEDS_ECG else [])
                                  for name, jobs in JOBS.items() if jobs > 1 and name != "reuse_freeze"])
def test_sweep_presets_expand_to_their_jobs(run_dlexp, data_dir, tmp_path, name):
    """`dlexp train experiment=NAME` (no -m) runs the preset's whole sweep, one row per value."""
    result = run_dlexp("train", f"experiment={name}", *DEBUG, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "running it as a multirun" in result.stderr
    rows = summary(result, tmp_path)
    assert len(rows) == JOBS[name] and all(row["status"] == "completed" for row in rows)
    assert len({row["overrides"] for row in rows}) == JOBS[name]  # every combination of the swept values once


@pytest.mark.slow
def test_reuse_freeze_loads_layer1_and_runs_with_and_without_the_cache(run_dlexp, data_dir, tmp_path):
    """The two-step reuse experiment: a 1-hidden-layer net, then its layer1 frozen in a deeper net (cache on/off)."""
    first = run_dlexp("train", "experiment=reuse_pretrain", *DEBUG)
    assert first.returncode == 0, first.stderr[-3000:]
    source = run_dir_of(first)
    missing = run_dlexp("train", "experiment=reuse_freeze", *DEBUG)
    assert missing.returncode == 2 and "model.init_from" in missing.stderr
    result = run_dlexp("train", "experiment=reuse_freeze", f"model.init_from={source}", *DEBUG)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = summary(result, tmp_path)
    swept = sorted(row["overrides"].split()[0].lower() for row in rows)
    assert swept == ["callbacks.freeze.cache=auto", "callbacks.freeze.cache=false"]
    for row in rows:  # each job loaded the pretrained layer1 (weight and bias) and nothing else, and froze it
        log = (sweep_dir(result, tmp_path) / row["job"] / "train.log").read_text()
        assert "loaded 2 tensors (layer1.0.weight, layer1.0.bias)" in log
        assert "froze 2 parameter tensors" in log
        cached = "frozen-prefix cache: on" in log
        assert cached == row["overrides"].lower().startswith("callbacks.freeze.cache=auto"), log[-2000:]


@pytest.mark.slow
def test_pinning_or_crossing_the_swept_key(run_dlexp, data_dir, tmp_path):
    """optimizer=adam pins the optimizers sweep to one plain run; seed=1,2 crosses a sweep preset with seeds."""
    result = run_dlexp("train", "experiment=optimizers", "optimizer=adam", *DEBUG)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir_of(result) / "metrics.json").is_file()  # one plain run, not a sweep
    crossed = run_dlexp("train", "experiment=grad_clipping", "seed=1,2", *DEBUG)
    assert crossed.returncode == 0, crossed.stderr[-3000:]
    rows = summary(crossed, tmp_path)
    swept = lambda row: " ".join(sorted(o for o in row["overrides"].split() if o.startswith(("callbacks.", "seed="))))
    assert sorted(swept(row) for row in rows) == [
        f"callbacks.grad_clip.algorithm={a} seed={s}" for a in ("norm", "value") for s in (1, 2)]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_passes_the_checks_and_declares_its_sweep(name, tmp_path):
    """Each preset passes check_overrides as `dlexp train experiment=NAME` would (every sweep value composes; key
    types, monitor, input kinds), resolves, and sweeps over the JOBS this module counts; a key it lists under
    `required:` is reported missing until it is given."""
    base = [f"experiment={name}", f"run_dir={tmp_path}"]
    composed = compose(base, return_hydra_config=True)
    assert jobs_of(composed.hydra.sweeper.get("params") or {}) == JOBS[name]
    required = list(composed.get("required") or [])
    assert set(required) <= set(STAND_INS), f"{name}: give test_experiments.STAND_INS a value for {required}"
    if required:
        with pytest.raises(ConfigError, match=f"required value missing: {required[0]}"):
            check_overrides(base)
    cfg = check_overrides(base + [f"{key}={STAND_INS[key]}" for key in required])
    assert OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("name", PRESETS)
def test_scale_full_restores_the_notes_budget(name, tmp_path):
    """+scale=full composes for every preset and restores the budget of those that shrink it on CPU."""
    cpu = compose([f"experiment={name}", f"run_dir={tmp_path}"])
    full = compose([f"experiment={name}", "+scale=full", f"run_dir={tmp_path}"])
    assert full.scale == "full" and "scale" not in cpu
    budget = lambda c: (c.trainer.max_epochs, c.trainer.limit_train_batches, c.dataset.batch_size)
    assert (budget(cpu) == budget(full)) == (name in NOTES_BUDGET), f"{name}: cpu {budget(cpu)}, full {budget(full)}"


def test_cfg_prints_a_sweep_presets_config_and_refuses_multirun(run_dlexp):
    """--cfg job on a sweep preset prints its (first job's) config instead of starting the sweep; -m --cfg is a
    one-line error (Hydra itself would raise a traceback)."""
    shown = run_dlexp("train", "experiment=optimizers", "+scale=full", "--cfg", "job", "--resolve")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "max_epochs: 40" in shown.stdout and "running it as a multirun" not in shown.stderr
    refused = run_dlexp("train", "-m", "optimizer=sgd,adam", "--cfg", "job")
    assert refused.returncode == 2 and refused.stderr.startswith("error: --cfg")
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_resume_finishes_a_sweep_presets_missing_job(run_dlexp, data_dir, tmp_path):
    """A preset's sweep (hydra.sweeper.params, not on the command line) stopped before its last job:
    `dlexp resume SWEEP_DIR` knows the preset's jobs and runs only the missing one, with its swept value."""
    import shutil

    result = run_dlexp("train", "experiment=grad_clipping", *DEBUG)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = sweep_dir(result, tmp_path)
    swept = {row["job"]: row["overrides"].split()[0] for row in summary(result, tmp_path)}
    shutil.rmtree(sweep / "1")  # as if the sweep was killed before job 1 started
    resumed = run_dlexp("resume", str(sweep))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "job 0: completed, skipped" in resumed.stdout
    rows = {row["job"]: row for row in summary(resumed, tmp_path)}
    assert rows["1"]["status"] == "completed" and rows["1"]["overrides"].split()[0] == swept["1"]
    assert "algorithm: norm" in (sweep / "1" / "config.yaml").read_text()
