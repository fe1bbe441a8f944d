"""dlexp/engine/autotune.py: `channels_last: auto` and `threads: auto` measured on the CPU, cached, without side
effects on the run (weights, buffers, random draws)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dlexp.engine import autotune
from dlexp.errors import ConfigError
from dlexp.nets.classifiers import ConvNet
from dlexp.nets.gans import GAN, DCGANDiscriminator, DCGANGenerator


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLEXP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the thread budget of these tests (conftest gives the suite 1)
    return tmp_path / "cache" / "speed.json"


def convnet() -> nn.Module:
    return ConvNet(in_channels=1, image_size=16, num_classes=4, channels=[4, 8], kernel_size=3, batch_norm=True,
                   dropout=0.2)


def example(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 1, 16, 16), torch.randint(0, 4, (n,))


def test_fixed_values_are_kept_without_a_probe(cache):
    torch.set_num_threads(2)
    assert autotune.choose(convnet(), example(), True, 1, on_gpu=False) == autotune.Switches(True, 1)
    assert autotune.choose(convnet(), example(), False, 8, on_gpu=False) == autotune.Switches(False, 2)  # <= budget
    assert not cache.exists()


def test_no_conv_and_one_thread_leave_nothing_to_measure(cache, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(256, 4))
    assert autotune.choose(mlp, example(), "auto", "auto", on_gpu=False) == autotune.Switches(False, 1)
    assert not cache.exists()


def test_on_a_gpu_auto_is_channels_last_and_threads_are_left_alone(cache):
    torch.set_num_threads(2)
    assert autotune.choose(convnet(), example(), "auto", "auto", on_gpu=True) == autotune.Switches(True, 2)
    assert not cache.exists()


def test_the_probe_measures_every_candidate_caches_the_fastest_and_reuses_it(cache, monkeypatch):
    torch.set_num_threads(2)
    chosen = autotune.choose(convnet(), example(), "auto", "auto", on_gpu=False)
    assert torch.get_num_threads() == 2  # the probe gives the threads back; build() sets the chosen count
    (entry,) = json.loads(cache.read_text()).values()
    timings = entry["timings"]
    assert {(t["channels_last"], t["threads"]) for t in timings} == {(False, 1), (False, 2), (True, 1), (True, 2)}
    fastest = min(timings, key=lambda t: t["ms"])
    assert chosen == autotune.Switches(fastest["channels_last"], fastest["threads"])
    monkeypatch.setattr(autotune, "measure", lambda *a: pytest.fail("measured again instead of reading the cache"))
    assert autotune.choose(convnet(), example(), "auto", "auto", on_gpu=False) == chosen
    key = next(iter(json.loads(cache.read_text())))
    assert autotune.cpu_model() in key and torch.__version__ in key and "(8, 1, 16, 16)" in key


def test_a_damaged_cache_is_measured_again(cache):
    torch.set_num_threads(2)
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    autotune.choose(convnet(), example(), "auto", 2, on_gpu=False)
    assert len(json.loads(cache.read_text())) == 1


def test_the_probe_changes_neither_the_net_nor_the_random_stream():
    torch.set_num_threads(2)
    net, batch = convnet(), example()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    autotune.measure(net, batch, [False, True], [1, 2])
    assert torch.equal(torch.rand(5), expected)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN running stats too
    assert all(p.grad is None for p in net.parameters()) and net.features.layer2[0].weight.is_contiguous()


def test_a_conditional_gan_pair_is_probed_through_its_critic():
    gan = GAN(DCGANGenerator(latent_dim=8, channels=1, image_size=16, width=4, num_classes=4),
              DCGANDiscriminator(channels=1, image_size=16, width=4, num_classes=4))
    result = autotune.measure(gan, example(), [False, True], [1])
    assert len(result["timings"]) == 2 and all(t["ms"] > 0 for t in result["timings"])


@pytest.mark.parametrize("channels_last, threads", [("sometimes", "auto"), ("auto", 0), ("auto", "many"),
                                                    (True, True)])
def test_bad_values_are_refused(channels_last, threads):
    with pytest.raises(ConfigError, match="channels_last|threads"):
        autotune.choose(convnet(), example(), channels_last, threads, on_gpu=False)


def test_thread_candidates_double_up_to_the_budget():
    assert autotune.thread_candidates(1) == [1]
    assert autotune.thread_candidates(6) == [1, 2, 4, 6]
    assert autotune.thread_candidates(8) == [1, 2, 4, 8]


def test_a_net_the_probe_cannot_step_gets_the_plain_defaults(cache):
    """A VAE has no forward of its own (its task calls encoder and decoder): no probe, contiguous, all threads."""
    class NoForward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

    torch.set_num_threads(2)
    assert autotune.choose(NoForward(), example(), "auto", "auto", on_gpu=False) == autotune.Switches(False, 2)
    (entry,) = json.loads(cache.read_text()).values()
    assert "forward" in entry["skipped"]


def test_the_budget_is_the_environment_s_or_the_process_default_not_the_last_choice(monkeypatch):
    """Sequential sweep jobs in one process: a job that chose 1 thread does not shrink the next job's budget."""
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    assert autotune.thread_budget() == autotune.DEFAULT_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert autotune.thread_budget() == 3
