"""dlexp/optim.py: the lr schedules (warmup, exponential, step, cosine), in real runs and in checkpoints."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from conftest import FAKE_MLP, run
from dlexp.optim import CosineDecay, ExponentialDecay, Multiplier, StepDecay


def lrs_over(multiplier: Multiplier, steps: int, lr: float = 0.1) -> list[float]:
    """The lr a real optimizer sees at steps 0..steps-1 under LambdaLR(multiplier)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = LambdaLR(opt, multiplier)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_exponential_decay_matches_the_notes_formula():
    """lr at step s is lr * decay_rate ** (s / decay_steps)."""
    lrs = lrs_over(ExponentialDecay(decay_rate=0.5, decay_steps=10), 101)
    for s in (0, 1, 5, 10, 25, 100):
        assert lrs[s] == pytest.approx(0.1 * 0.5 ** (s / 10), rel=1e-9)


def test_exponential_schedule_in_a_run(make_cfg):
    """scheduler=exponential steps every batch: after 6 steps lr = lr0 * rate ** (6 / decay_steps)."""
    parts = run(make_cfg, *FAKE_MLP, "scheduler=exponential", "scheduler.decay_rate=0.5", "scheduler.decay_steps=3",
                "trainer.max_epochs=2")
    assert parts.trainer.global_step == 6
    assert parts.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** 2, rel=1e-9)


def test_warmup_ramps_linearly_then_hands_over_to_decay():
    """A 4-step warmup gives factors 1/4, 2/4, 3/4, 1, then the decay alone."""
    assert [Multiplier(warmup_steps=4)(s) for s in range(7)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1])
    decay = ExponentialDecay(warmup_steps=4, decay_rate=0.5, decay_steps=10)
    for s in range(12):
        assert decay(s) == pytest.approx(min(1, (s + 1) / 4) * 0.5 ** (s / 10))
    ramp = lrs_over(Multiplier(warmup_steps=5), 5)
    steps = [b - a for a, b in zip(ramp, ramp[1:])]
    assert steps == pytest.approx([steps[0]] * 4) and ramp[-1] == pytest.approx(0.1)


def test_step_decay_drops_by_gamma_every_step_size_epochs():
    """With 3 batches an epoch and step_size=2 the factor halves every 6 steps."""
    decay = StepDecay(gamma=0.5, step_size=2, steps_per_epoch=3)
    assert [decay(s) for s in range(18)] == [1.0] * 6 + [0.5] * 6 + [0.25] * 6


class EpochLR(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_step_schedule_in_a_run_counts_epochs_from_batches(make_cfg):
    """scheduler=step with step_size=1 halves the lr at each epoch boundary of a real run."""
    probe = EpochLR()
    run(make_cfg, *FAKE_MLP, "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5",
        "trainer.max_epochs=3", extra=(probe,))
    assert probe.lrs == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=1e-9)


def test_cosine_decay_goes_from_one_to_min_factor():
    """Cosine factor: 1 at step 0, the midpoint halfway, min_factor at and after total_steps, never rising."""
    decay = CosineDecay(total_steps=20, min_factor=0.1)
    factors = [decay(s) for s in range(31)]
    assert factors[0] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(0.55)
    assert factors[20] == pytest.approx(0.1) and factors[30] == pytest.approx(0.1)
    assert all(b <= a + 1e-12 for a, b in zip(factors, factors[1:]))


@pytest.mark.parametrize("multiplier, blank", [
    (ExponentialDecay(warmup_steps=3, decay_rate=0.3, decay_steps=7), ExponentialDecay()),
    (StepDecay(warmup_steps=2, gamma=0.2, step_size=3, steps_per_epoch=5), StepDecay()),
    (CosineDecay(warmup_steps=1, total_steps=40, min_factor=0.05), CosineDecay()),
])
def test_lambda_lr_state_round_trips_through_weights_only_load(tmp_path, multiplier, blank):
    """A LambdaLR over a schedule saves plain numbers: torch.load(weights_only=True) restores it exactly."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = LambdaLR(opt, multiplier)
    for _ in range(5):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "sched.pt")
    state = torch.load(tmp_path / "sched.pt", weights_only=True)

    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    restored = LambdaLR(opt2, blank)
    restored.load_state_dict(state)
    assert blank == multiplier
    assert restored.last_epoch == 5
    assert restored.get_last_lr() == pytest.approx(sched.get_last_lr())
    for s in range(5, 30):
        assert blank(s) == multiplier(s)


def test_run_checkpoint_with_schedule_loads_weights_only(make_cfg, tmp_path):
    """A run's last.ckpt (with scheduler=cosine) loads with weights_only=True and holds the schedule's numbers."""
    run(make_cfg, *FAKE_MLP, "scheduler=cosine", "scheduler.min_factor=0.2", "callbacks=checkpoint",
        "trainer.max_epochs=2")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    sched = ckpt["lr_schedulers"][0]
    assert sched["last_epoch"] == ckpt["global_step"] > 0
    assert sched["lr_lambdas"][0] == {"warmup_steps": 0, "total_steps": 6, "min_factor": 0.2}
