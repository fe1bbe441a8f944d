"""`dlexp eval` end to end (dlexp/commands/eval.py, dlexp/engine/evaluation.py): classifier and GAN reports."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_dir_of
from PIL import Image


@pytest.mark.slow
def test_eval_classifier_run(run_dlexp):
    """dlexp eval on a classifier run: accuracy equal to the run's test/acc, per-class accuracy, confusion
    matrix (PNG and markdown) and the most confidently wrong images, in eval/ and metrics.json."""
    run = run_dlexp("train", "trainer.max_epochs=2", "logger=none")
    run_dir = run_dir_of(run)
    result = run_dlexp("eval", str(run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert all(f"eval/acc_class_{c}" in metrics for c in range(10))
    table = (run_dir / "eval" / "confusion.md").read_text()
    assert table.count("\n| **") == 10
    counts = sum(int(v) for line in table.splitlines()[2:] for v in line.split("|")[2:-2])
    assert counts == metrics["eval/n_test"]
    with Image.open(run_dir / "eval" / "confusion.png") as img:
        img.verify()
    assert (run_dir / "eval" / "confidently_wrong.png").exists()
    bad = run_dlexp("eval", str(run_dir), "n_reel=10")
    assert bad.returncode == 2 and "did you mean 'n_real'" in bad.stderr


@pytest.mark.slow
def test_eval_gan_scores_with_protocol_and_training_lowers_fid(run_dlexp, tmp_path):
    """dlexp eval on a GAN run writes every score with its protocol; a generator trained longer scores a lower
    FID than an untrained one (same extractor, same samples sizes)."""
    extractor = run_dir_of(run_dlexp("train", "trainer.max_epochs=3", "logger=none"))
    runs = {}
    budgets = {0: ["trainer.max_epochs=1", "trainer.limit_train_batches=1"], 15: ["trainer.max_epochs=15"]}
    for epochs, budget in budgets.items():  # 0: a single step, as good as untrained
        run = run_dlexp("train", "model=dcgan", *budget, "logger=none", "model.generator.width=32",
                        "model.discriminator.width=32")
        assert run.returncode == 0, run.stderr[-2000:]
        runs[epochs] = run_dir_of(run)
        result = run_dlexp("eval", str(runs[epochs]), f"extractor={extractor}", "n_fake=400")
        assert result.returncode == 0, result.stderr[-2000:]
    scores = {e: json.loads((d / "metrics.json").read_text()) for e, d in runs.items()}
    for key in ("eval/fid", "eval/kid", "eval/kid_std", "eval/is", "eval/precision", "eval/recall",
                "eval/fid_floor", "eval/n_real", "eval/n_fake", "eval/extractor_sha256", "eval/extractor_acc",
                "eval/seed", "eval/real_split"):
        assert key in scores[15], key
    assert scores[15]["eval/fid"] < scores[0]["eval/fid"]
    assert scores[15]["eval/fid_floor"] < scores[15]["eval/fid"]
    assert 1.0 <= scores[15]["eval/is"] <= 10.0
    protocol = json.loads((runs[15] / "eval" / "scores.json").read_text())["protocol"]
    assert protocol["n_fake"] == 400 and protocol["extractor"] == str(extractor)


def test_eval_inception_without_weights_says_how(run_dlexp, tmp_path):
    """backbone=inception without local weights: one line saying how to provide them; nothing downloads."""
    run_dir = tmp_path / "outputs" / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("task:\n  _target_: dlexp.tasks.adversarial.AdversarialTask\n")
    result = run_dlexp("eval", str(run_dir), "backbone=inception")
    assert result.returncode == 2 and "eval.weights=PATH" in result.stderr and "never downloads" in result.stderr


@pytest.mark.slow
def test_eval_inception_backbone_from_local_weights(run_dlexp, tmp_path):
    """backbone=inception with a local torchvision inception_v3 state_dict (random weights here: nothing is
    downloaded) gives the scores on 2048-d pool features, and records the weights' checksum."""
    from torchvision.models import inception_v3

    weights = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    run = run_dlexp("train", "model=dcgan", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "logger=none")
    run_dir = run_dir_of(run)
    result = run_dlexp("eval", str(run_dir), "backbone=inception", f"weights={weights}", "n_real=8", "n_fake=8",
                       "kid_subset_size=8", "batch_size=8")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval/backbone"] == "inception" and len(metrics["eval/extractor_sha256"]) == 64
    assert math.isfinite(metrics["eval/fid"]) and metrics["eval/fid"] >= 0
