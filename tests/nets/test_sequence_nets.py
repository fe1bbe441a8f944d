"""dlexp/nets/sequences.py, recurrent.py and signal_gans.py: output shapes, recurrent dropout with one mask per
sequence, the unrolled cell loop against torch's fused kernels, character generation, the 1-D GAN nets."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlexp.nets.gans import GAN
from dlexp.nets.recurrent import (
    CharLSTM,
    RecurrentClassifier,
    RecurrentStack,
    RowRecurrentClassifier,
    last_step,
)
from dlexp.nets.sequences import (
    Conv1DClassifier,
    Conv1DGRU,
    DenseNet,
    EmbeddingClassifier,
)
from dlexp.nets.signal_gans import SignalCritic, SignalGenerator

B, T, V = 4, 20, 50


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def tokens(b: int = B, t: int = T) -> torch.Tensor:
    x = torch.randint(1, V, (b, t))
    x[:, :5] = 0  # pre-padded, as Keras' pad_sequences
    return x


@pytest.mark.parametrize("net, x, shape", [
    (DenseNet(100, [16, 16], 1), torch.randint(0, 2, (B, 100)).float(), (B, 1)),     # IMDB multi-hot
    (DenseNet(100, [64, 4], 46), torch.randint(0, 2, (B, 100)).float(), (B, 46)),    # Reuters bottleneck
    (DenseNet(13, [64, 64], 1, dropout=0.5), torch.randn(B, 13), (B, 1)),            # Boston
    (EmbeddingClassifier(V, 8, T, 1), tokens(), (B, 1)),
    (EmbeddingClassifier(V, 8, T, 3, hidden=[16], dropout=0.2), tokens(), (B, 3)),
    (Conv1DClassifier(V, 16, 1), tokens(), (B, 1)),
    (Conv1DClassifier(V, 16, 5, channels=[8, 8, 8], kernel_size=3, pool=2), tokens(b=B, t=3), (B, 5)),
    (Conv1DGRU(V, 16, 1, recurrent_dropout=0.5, dropout=0.1), tokens(), (B, 1)),
    (CharLSTM(V, 8, 16, num_layers=2, dropout=0.1), tokens(), (B, T, V)),
], ids=["imdb_dense", "reuters_bottleneck", "boston", "embedding", "embedding_hidden", "conv1d", "conv1d_short",
        "conv1d_gru", "char_lstm"])
def test_forward_shapes_in_train_and_eval_mode(net, x, shape):
    for training in (True, False):
        out = net.train(training)(x)
        assert out.shape == shape and torch.isfinite(out).all()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("recurrent_dropout", [0.0, 0.3])
def test_recurrent_classifier_shapes(cell, bidirectional, recurrent_dropout):
    """Stacked, (bi)directional, with and without the cell loop: (B, num_outputs); the head reads D*H features."""
    net = RecurrentClassifier(V, 8, 3, cell, hidden_size=6, num_layers=2, bidirectional=bidirectional,
                              dropout=0.2, recurrent_dropout=recurrent_dropout)
    assert net.fc.in_features == 6 * (2 if bidirectional else 1) == net.rnn.output_size
    for training in (True, False):
        assert net.train(training)(tokens()).shape == (B, 3)


def test_bidirectional_summary_is_forward_last_and_backward_first_step():
    """last_step gives torch's final states: the forward direction's at t = T-1, the backward one's at t = 0."""
    stack = RecurrentStack(5, 7, "lstm", bidirectional=True).eval()
    x = torch.randn(3, 9, 5)
    out, (h_n, _) = stack.layers[0](x)
    assert out.shape == (3, 9, 14) and stack.output_size == 14
    assert torch.allclose(last_step(out, 7), torch.cat([h_n[0], h_n[1]], dim=1))
    assert torch.allclose(last_step(out[:, :, :7], 7), h_n[0])  # unidirectional: the last step only


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_cell_loop_without_dropout_matches_the_fused_kernel(cell, bidirectional):
    """p = 0: the Python loop on the fused layer's own weights gives torch's nn.RNN/LSTM/GRU outputs."""
    stack = RecurrentStack(5, 8, cell, bidirectional=bidirectional).eval()
    x = torch.randn(3, 11, 5)
    fused = stack.layers[0](x)[0]
    assert torch.allclose(stack.unrolled(stack.layers[0], x), fused, atol=1e-5)


def test_unrolled_lstm_matches_torch_lstm_cell():
    """The unrolled step is torch's LSTMCell (gate order i, f, g, o) given the same weights."""
    stack = RecurrentStack(4, 6, "lstm").eval()
    layer, cell = stack.layers[0], nn.LSTMCell(4, 6)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(layer, f"{name}_l0"))
    x = torch.randn(2, 7, 4)
    h = c = torch.zeros(2, 6)
    steps = []
    for t in range(7):
        h, c = cell(x[:, t], (h, c))
        steps.append(h)
    assert torch.allclose(stack.unrolled(layer, x), torch.stack(steps, dim=1), atol=1e-5)


def dropped_units(training: bool, batch: int = 8, hidden: int = 64, steps: int = 6,
                  mask: str = "sequence") -> torch.Tensor:
    """(B, T-1, H) True where a unit of an Elman RNN ran with its recurrent input dropped at that step.

    With W_ih = 0, W_hh = I and bias b: h_1 = tanh(b), then h_t = tanh(m * h_{t-1} + b). A dropped unit (m = 0)
    stays at tanh(b); a kept one (m = 1 / (1 - p) = 2) moves away from it.
    """
    stack = RecurrentStack(1, hidden, "rnn", recurrent_dropout=0.5, dropout_mask=mask).train(training)
    layer = stack.layers[0]
    with torch.no_grad():
        layer.weight_ih_l0.zero_()
        layer.bias_ih_l0.zero_()
        layer.weight_hh_l0.copy_(torch.eye(hidden))
        layer.bias_hh_l0.fill_(0.5)
    h = stack(torch.zeros(batch, steps, 1))  # (B, T, H)
    return (h[:, 1:] - math.tanh(0.5)).abs() < 1e-6


def test_recurrent_dropout_mask_is_one_per_sequence():
    """Training: each unit of each sequence is dropped at every step or at none (one mask per sequence, the same at
    every time step), about half of them for p = 0.5, and the masks differ between the sequences of a batch."""
    dropped = dropped_units(training=True)
    assert (dropped == dropped[:, :1]).all(), "a mask changed between time steps"
    per_sequence = dropped[:, 0]  # (B, H)
    assert 0.3 < per_sequence.float().mean() < 0.7
    assert len({tuple(row.tolist()) for row in per_sequence}) == len(per_sequence), "sequences share a mask"


def test_recurrent_dropout_is_off_in_eval_mode():
    assert not dropped_units(training=False).any()


def test_recurrent_dropout_draws_new_masks_each_batch():
    assert not torch.equal(dropped_units(training=True), dropped_units(training=True))


def test_recurrent_dropout_per_step_masks_change_between_steps():
    """dropout_mask=step (the naive way the notes warn against): a fresh mask at every step, about half dropped."""
    dropped = dropped_units(training=True, mask="step")
    assert not (dropped == dropped[:, :1]).all()
    assert 0.3 < dropped.float().mean() < 0.7


def test_input_dropout_is_one_mask_per_sequence_and_feature():
    """Keras' `dropout`: a feature of a sequence is zeroed at every time step or at none."""
    stack = RecurrentStack(32, 4, "gru", dropout=0.5).train()
    out = stack.dropped(torch.ones(6, 10, 32))  # (B, T, F)
    zero = out == 0
    assert (zero == zero[:, :1]).all() and 0.2 < zero.float().mean() < 0.8
    assert torch.allclose(out[~zero], torch.tensor(2.0))  # inverted dropout: kept features scaled by 1 / (1 - p)


def test_input_dropout_per_step_draws_a_mask_per_step():
    stack = RecurrentStack(32, 4, "gru", dropout=0.5, dropout_mask="step").train()
    zero = stack.dropped(torch.ones(6, 10, 32)) == 0
    assert not (zero == zero[:, :1]).all() and 0.3 < zero.float().mean() < 0.7


def test_row_classifier_reads_an_image_row_by_row():
    """(B, C, H, W): H time steps of C*W features; the same as the stack run on the rows by hand."""
    net = RowRecurrentClassifier(2, 5, 3, "lstm", hidden_size=6, bidirectional=True).eval()
    x = torch.randn(4, 2, 5, 5)
    rows = torch.stack([x[:, :, t].reshape(4, -1) for t in range(5)], dim=1)  # row t: channel 0's then 1's pixels
    assert torch.allclose(net(x), net.fc(last_step(net.rnn(rows), 6)))
    assert net.train()(x).shape == (4, 3)


def test_recurrent_options_are_checked():
    with pytest.raises(ValueError, match="model.cell"):
        RecurrentStack(4, 4, "transformer")
    with pytest.raises(ValueError, match="recurrent_dropout"):
        RecurrentStack(4, 4, "lstm", recurrent_dropout=1.0)
    with pytest.raises(ValueError, match="model.dropout_mask"):
        RecurrentStack(4, 4, "lstm", dropout_mask="token")


def test_char_lstm_greedy_generation_is_deterministic_and_keeps_the_state():
    """Greedy ids are the argmax of the full-sequence forward at every step (the state carried, not restarted)."""
    net = CharLSTM(12, 8, 16).train()  # generate() runs in eval mode and gives the mode back
    prompt = torch.tensor([1, 2, 3, 4])
    ids = net.generate(prompt, 10)
    assert net.training and ids.shape == (10,) and ids.dtype == torch.long
    assert torch.equal(ids, net.generate(prompt, 10, temperature=0))
    assert torch.equal(ids, net.generate(prompt, 10, temperature=None))
    net.eval()
    logits = net(torch.cat([prompt, ids[:-1]]).view(1, -1))[0]  # (T0 + n - 1, V)
    assert torch.equal(logits[len(prompt) - 1:].argmax(dim=1), ids)


def test_char_lstm_sampling_follows_the_generator_seed():
    """The same generator seed gives the same draws; another seed others; a tiny temperature is greedy."""
    net = CharLSTM(30, 8, 16)
    prompt = torch.tensor([5, 6])

    def draw(seed: int, temperature: float = 1.0) -> torch.Tensor:
        return net.generate(prompt, 25, temperature, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))
    assert torch.equal(draw(3, temperature=1e-4), net.generate(prompt, 25))
    with pytest.raises(ValueError, match="prompt"):
        net.generate(torch.tensor([], dtype=torch.long), 3)


@pytest.mark.parametrize("channels, length", [(1, 187), (2, 64), (1, 960)])
def test_signal_generator_and_critic_shapes(channels, length):
    """G: z -> (B, C, L) in [-1, 1] for any length (cropped); the critic: (B, C, L) -> scores (B,), the shape the
    adversarial task checks; the pair samples like the image GANs."""
    G, D = SignalGenerator(16, channels, length, width=4), SignalCritic(channels, length, width=4)
    with torch.no_grad():
        fake = G(torch.randn(B, 16))
    assert fake.shape == (B, channels, length) and float(fake.abs().max()) <= 1
    assert D(fake).shape == (B,)
    gan = GAN(G, D)
    assert gan.latent_dim == 16 and gan.num_classes == 0
    assert gan.sample(torch.randn(2, 16)).shape == (2, channels, length)


def test_signal_critic_batch_norm_is_optional_and_conditional_nets_take_labels():
    assert not any(isinstance(m, nn.BatchNorm1d) for m in SignalCritic(1, 64, width=4).modules())
    assert sum(isinstance(m, nn.BatchNorm1d) for m in SignalCritic(1, 64, width=4, batch_norm=True).modules()) == 3
    G = SignalGenerator(8, 1, 64, width=4, num_classes=3)
    D = SignalCritic(1, 64, width=4, spectral_norm=True, num_classes=3)
    labels = torch.tensor([0, 1, 2, 1])
    assert D(G(torch.randn(4, 8), labels), labels).shape == (4,)
    with pytest.raises(ValueError, match="labels"):
        D(torch.zeros(4, 1, 64))
    with pytest.raises(ValueError, match="length"):
        SignalGenerator(8, 1, 1)
