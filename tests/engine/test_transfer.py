"""dlexp/engine/transfer.py: load_matching from checkpoints, state_dicts and run directories; model.init_from."""
from __future__ import annotations

import shutil

import pytest
import torch

from conftest import run, snapshot
from dlexp.engine.build import build
from dlexp.engine.transfer import load_matching
from dlexp.nets.classifiers import MLP


@pytest.fixture
def source_run(make_cfg, tmp_path):
    """A trained MLP hidden [32] on fake data with checkpoints/best.ckpt and last.ckpt; returns (run_dir, net)."""
    parts = run(make_cfg, "dataset=fake", "model=mlp", "model.hidden=[32]", "callbacks=checkpoint")
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir, parts.task.net


def target_net(hidden: list[int]) -> MLP:
    torch.manual_seed(123)
    return MLP(1, 28, 10, hidden=hidden, activation="elu")


def test_load_matching_copies_included_layers_from_a_lightning_checkpoint(source_run):
    """include ['layer1\\.']: layer1 comes from the source checkpoint; the rest of the deeper net is untouched."""
    run_dir, source = source_run
    net = target_net([32, 16])
    before = snapshot(net)
    report = load_matching(net, run_dir / "checkpoints" / "last.ckpt", include=["layer1\\."])
    assert report.loaded == ["layer1.0.weight", "layer1.0.bias"]
    assert report.skipped == ["out.weight", "out.bias"]
    assert report.mismatched == []
    src = source.state_dict()
    for k in report.loaded:
        assert torch.equal(net.state_dict()[k], src[k]), k
    for k in ("layer2.0.weight", "layer2.0.bias", "out.weight", "out.bias"):
        assert torch.equal(net.state_dict()[k], before[k]), k


def test_load_matching_plain_state_dict_reports_shape_mismatch(source_run, tmp_path):
    """From a plain state_dict into hidden [64]: same-shape tensors load, the others are reported, not loaded."""
    _, source = source_run
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    net = target_net([64])
    before = snapshot(net)
    report = load_matching(net, tmp_path / "plain.pt")
    assert report.loaded == ["out.bias"]
    assert report.skipped == []
    assert report.mismatched == ["layer1.0.weight (32, 784)->(64, 784)", "layer1.0.bias (32,)->(64,)",
                                 "out.weight (10, 32)->(10, 64)"]
    assert torch.equal(net.out.bias, source.out.bias)
    for k in ("layer1.0.weight", "layer1.0.bias", "out.weight"):
        assert torch.equal(net.state_dict()[k], before[k]), k


def test_load_matching_exclude_and_absent_names_are_skipped(source_run):
    """exclude wins over include, and names the new net lacks are skipped."""
    run_dir, source = source_run
    net = target_net([32, 16])
    report = load_matching(net, run_dir / "checkpoints" / "last.ckpt", include=[".*"], exclude=["bias$"])
    assert report.loaded == ["layer1.0.weight"]
    assert report.skipped == ["layer1.0.bias", "out.bias"]
    assert report.mismatched == ["out.weight (10, 32)->(10, 16)"]
    assert torch.equal(net.layer1[0].weight, source.layer1[0].weight)


def test_run_directory_is_accepted_as_source(source_run, tmp_path, make_cfg):
    """A run directory holding only checkpoints/last.ckpt works as source, also through model.init_from."""
    run_dir, source = source_run
    other = tmp_path / "other_run"
    (other / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", other / "checkpoints" / "last.ckpt")
    net = target_net([32, 16])
    report = load_matching(net, other, include=["layer1\\."])
    assert report.loaded == ["layer1.0.weight", "layer1.0.bias"]
    assert torch.equal(net.layer1[0].weight, source.layer1[0].weight)

    parts = build(make_cfg("dataset=fake", "model=mlp", "model.hidden=[32,16]", f"model.init_from={other}",
                           "model.init_include=['^layer1\\.']"), model_name="mlp")
    built = parts.task.net
    assert torch.equal(built.layer1[0].weight, source.layer1[0].weight)
    assert torch.equal(built.layer1[0].bias, source.layer1[0].bias)
    assert not torch.equal(built.out.bias, source.out.bias)


def test_load_matching_with_nothing_matching_raises(source_run):
    """No tensor selected (or every selected one mismatched) is a ValueError, and the net is left as it was."""
    run_dir, _ = source_run
    net = target_net([32, 16])
    before = snapshot(net)
    with pytest.raises(ValueError, match="no tensor matched"):
        load_matching(net, run_dir, include=["encoder\\."])
    with pytest.raises(ValueError, match="no tensor matched"):
        load_matching(target_net([64]), run_dir, include=["layer1\\."])
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
