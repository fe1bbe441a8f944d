"""Recurrent nets for token sequences (the Keras notes' SimpleRNN, LSTM, GRU, stacked and bidirectional), for images
read row by row, and a character-level LSTM language model, with Keras-style input dropout and true recurrent dropout.

Sequences are pre-padded with id 0 (Keras' pad_sequences default): the last time step holds the real last word,
so a classifier reads the forward direction's last output. Padding is embedded like a word (the embedding keeps
id 0 at zero), not masked out, as in the notes' Keras models.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dlexp.nets.modes import eval_mode

FUSED: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
State = tuple[torch.Tensor, ...]  # (h,) or (h, c) for the LSTM, each (B, H)


def _rnn_step(gx: torch.Tensor, state: State, w_hh: torch.Tensor, b_hh: torch.Tensor, mask: torch.Tensor) -> State:
    """Elman step (nn.RNN, tanh): h' = tanh(x W_ih + b_ih + (h * mask) W_hh + b_hh)."""
    return (torch.tanh(gx + F.linear(state[0] * mask, w_hh, b_hh)),)


def _lstm_step(gx: torch.Tensor, state: State, w_hh: torch.Tensor, b_hh: torch.Tensor, mask: torch.Tensor) -> State:
    """LSTM step in torch's gate order (i, f, g, o); the dropped h feeds the gates, the cell c is not dropped."""
    h, c = state
    i, f, g, o = (gx + F.linear(h * mask, w_hh, b_hh)).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_step(gx: torch.Tensor, state: State, w_hh: torch.Tensor, b_hh: torch.Tensor, mask: torch.Tensor) -> State:
    """GRU step in torch's gate order (r, z, n); the dropped h feeds the gates, the carried h is not dropped."""
    h = state[0]
    r_x, z_x, n_x = gx.chunk(3, dim=1)
    r_h, z_h, n_h = F.linear(h * mask, w_hh, b_hh).chunk(3, dim=1)
    r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    return ((1 - z) * torch.tanh(n_x + r * n_h) + z * h,)


STEPS = {"rnn": _rnn_step, "lstm": _lstm_step, "gru": _gru_step}


def variational_mask(batch: int, size: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """One inverted-dropout mask per sequence (B, size): 0 with probability p, else 1 / (1 - p)."""
    keep = torch.full((batch, size), 1.0 - p, device=like.device, dtype=like.dtype)
    return torch.bernoulli(keep) / (1.0 - p)


MASKS = ("sequence", "step")  # dropout_mask: one mask per sequence (Keras, the notes) or a fresh one at every step


class RecurrentStack(nn.Module):
    """num_layers recurrent layers (each one torch nn.RNN/LSTM/GRU, bidirectional or not): (B, T, F) -> (B, T, D*H).

    dropout: Keras' `dropout`, on the inputs of every layer, one mask per sequence and feature shared by all time
    steps (variational input dropout; nn.Dropout1d over the (B, F, T) view drops whole feature channels).
    recurrent_dropout: Keras' `recurrent_dropout` (Gal & Ghahramani 2016): one mask per sequence on the state h
    that enters the recurrent weights, the same mask at every time step. Per-step masks would wreck the memory,
    which is why the notes insist on the frameworks' own option. The fused kernels cannot drop inside the
    recurrence, so while training with recurrent_dropout > 0 the layers are unrolled in a Python loop over time
    (slow, correct) on the fused modules' own weights; evaluation, and recurrent_dropout = 0, use the fused
    kernels, and a checkpoint is the same either way.
    dropout_mask: "sequence" (the above) or "step": a fresh mask at every time step for both dropouts, the naive
    way the notes warn against ("otherwise it works against you"), there to measure that claim.
    """

    def __init__(self, input_size: int, hidden_size: int, cell: str = "lstm", num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 dropout_mask: str = "sequence") -> None:
        super().__init__()
        if cell not in FUSED:
            raise ValueError(f"model.cell must be one of {', '.join(FUSED)}, got '{cell}'")
        if dropout_mask not in MASKS:
            raise ValueError(f"model.dropout_mask must be one of {', '.join(MASKS)}, got '{dropout_mask}'")
        if num_layers < 1 or hidden_size < 1:
            raise ValueError(f"model.num_layers and model.hidden_size must be >= 1, got {num_layers}, {hidden_size}")
        if not (0 <= dropout < 1 and 0 <= recurrent_dropout < 1):
            raise ValueError(f"model.dropout and model.recurrent_dropout must be in [0, 1), got {dropout}, "
                             f"{recurrent_dropout}")
        self.cell, self.hidden_size, self.recurrent_dropout = cell, hidden_size, recurrent_dropout
        self.per_step = dropout_mask == "step"
        self.directions = 2 if bidirectional else 1
        self.input_dropout = nn.Dropout(dropout) if self.per_step else nn.Dropout1d(dropout)
        sizes = [input_size] + [hidden_size * self.directions] * (num_layers - 1)
        self.layers = nn.ModuleList(
            FUSED[cell](n, hidden_size, batch_first=True, bidirectional=bidirectional) for n in sizes
        )

    @property
    def output_size(self) -> int:
        return self.hidden_size * self.directions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> outputs of the last layer at every step (B, T, D*H); forward half first."""
        unroll = self.training and self.recurrent_dropout > 0
        for layer in self.layers:
            x = self.dropped(x)
            x = self.unrolled(layer, x) if unroll else layer(x)[0]
        return x

    def dropped(self, x: torch.Tensor) -> torch.Tensor:
        """Input dropout on (B, T, F): per step, or on the (B, F, T) view, one mask per sequence and feature."""
        if self.per_step:
            return self.input_dropout(x)
        return self.input_dropout(x.transpose(1, 2)).transpose(1, 2)

    def unrolled(self, layer: nn.RNNBase, x: torch.Tensor) -> torch.Tensor:
        """One layer stepped in Python with the fused layer's weights and fresh recurrent masks (p = 0: exact)."""
        p = self.recurrent_dropout if self.training else 0.0
        outputs = []
        for suffix in ["", "_reverse"][: self.directions]:
            mask = variational_mask(x.shape[0], self.hidden_size, p, x) if p else x.new_ones(1, self.hidden_size)
            seq = x.flip(1) if suffix else x  # the backward direction reads the sequence from its end
            out = self._scan(layer, seq, suffix, mask)
            outputs.append(out.flip(1) if suffix else out)
        return torch.cat(outputs, dim=2)  # (B, T, D*H)

    def _scan(self, layer: nn.RNNBase, x: torch.Tensor, suffix: str, mask: torch.Tensor) -> torch.Tensor:
        """Run one direction over time: (B, T, F) -> (B, T, H), the same `mask` (B, H) at every step (or fresh ones
        with dropout_mask=step)."""
        w_ih, b_ih = getattr(layer, f"weight_ih_l0{suffix}"), getattr(layer, f"bias_ih_l0{suffix}")
        w_hh, b_hh = getattr(layer, f"weight_hh_l0{suffix}"), getattr(layer, f"bias_hh_l0{suffix}")
        gx = F.linear(x, w_ih, b_ih)  # input contributions of every step at once: (B, T, gates*H)
        zeros = x.new_zeros(x.shape[0], self.hidden_size)
        state: State = (zeros, zeros) if self.cell == "lstm" else (zeros,)
        step, hs = STEPS[self.cell], []
        p = self.recurrent_dropout if self.training else 0.0
        for t in range(x.shape[1]):
            if self.per_step and p and t:
                mask = variational_mask(x.shape[0], self.hidden_size, p, x)
            state = step(gx[:, t], state, w_hh, b_hh, mask)
            hs.append(state[0])
        return torch.stack(hs, dim=1)


def last_step(outputs: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """The sequence summary (B, D*H): forward direction at the last step, backward direction at the first."""
    forward = outputs[:, -1, :hidden_size]
    if outputs.shape[2] == hidden_size:
        return forward
    return torch.cat([forward, outputs[:, 0, hidden_size:]], dim=1)


class RecurrentClassifier(nn.Module):
    """Embedding, a stack of RNN/LSTM/GRU layers, a linear layer on the last step: (B, T) ids -> (B, num_outputs).

    The notes' IMDB models: Embedding(10000, 32) + SimpleRNN(32) / LSTM(32) / GRU(32, dropout 0.2, recurrent
    dropout 0.2), stacked (num_layers) or Bidirectional (bidirectional=true). One output: binary (BCE with logits).
    """

    input_kinds = ("tokens",)  # the data kinds it takes (checked against dataset.kind before a run)

    def __init__(self, vocab_size: int, embedding_dim: int, num_outputs: int, cell: str = "lstm",
                 hidden_size: int = 32, num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0, dropout_mask: str = "sequence") -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.rnn = RecurrentStack(embedding_dim, hidden_size, cell, num_layers, bidirectional, dropout,
                                  recurrent_dropout, dropout_mask)
        self.fc = nn.Linear(self.rnn.output_size, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.rnn(self.embed(x))  # (B, T) -> (B, T, E) -> (B, T, D*H)
        return self.fc(last_step(outputs, self.rnn.hidden_size))


class RowRecurrentClassifier(nn.Module):
    """An image read as a sequence, one row per time step (the classic sequential MNIST): (B, C, H, W) -> H steps of
    C*W features -> a stack of RNN/LSTM/GRU layers -> a linear layer on the last step -> (B, num_classes).

    The notes' recurrent experiments (dropout masks, stacking, bidirectional) on real data that is here offline.
    """

    input_kinds = ("image",)

    def __init__(self, channels: int, image_size: int, num_classes: int, cell: str = "gru", hidden_size: int = 128,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0, dropout_mask: str = "sequence") -> None:
        super().__init__()
        self.rnn = RecurrentStack(channels * image_size, hidden_size, cell, num_layers, bidirectional, dropout,
                                  recurrent_dropout, dropout_mask)
        self.fc = nn.Linear(self.rnn.output_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (B, C, H, W) -> (B, H, C*W): row t is time step t
        return self.fc(last_step(self.rnn(rows), self.rnn.hidden_size))


class CharLSTM(nn.Module):
    """The notes' text-generation LSTM: characters -> logits for the next character at every position (B, T, V).

    An embedding replaces the notes' one-hot input (the same map, learned at a lower rank). dropout: between
    stacked LSTM layers (torch's) and before the output layer. generate() samples with softmax temperature.
    """

    input_kinds = ("chars",)

    def __init__(self, vocab_size: int, embedding_dim: int = 32, hidden_size: int = 128, num_layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        return self.step(x, state)[0]  # (B, T) -> (B, T, V)

    def step(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, V) and the LSTM state after the last character, to continue from."""
        out, state = self.lstm(self.embed(x), state)
        return self.out(self.dropout(out)), state

    @torch.no_grad()
    def generate(self, prompt_ids: torch.Tensor, n: int, temperature: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """n ids sampled one at a time after prompt_ids (T0,), keeping the state; temperature 0/None: argmax."""
        if prompt_ids.ndim != 1 or len(prompt_ids) == 0:
            raise ValueError(f"generate needs a non-empty 1-D prompt of ids, got shape {tuple(prompt_ids.shape)}")
        device = self.out.weight.device
        with eval_mode(self):
            logits, state = self.step(prompt_ids.view(1, -1).to(device))
            ids = []
            for _ in range(n):
                nxt = pick(logits[0, -1], temperature, generator).to(device)
                ids.append(nxt)
                logits, state = self.step(nxt.view(1, 1), state)
        return torch.stack(ids) if ids else prompt_ids.new_empty(0)


def pick(logits: torch.Tensor, temperature: float | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next id from logits (V,): argmax, or a draw from softmax(logits / T), the notes' reweight_distribution
    (exp(log(p) / T) renormalised): T < 1 sharpens, T > 1 flattens towards uniform."""
    if not temperature:
        return logits.argmax()
    if temperature < 0 or math.isnan(temperature):
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    probs = torch.softmax(logits.float().cpu() / temperature, dim=0)  # CPU: a CPU generator draws the same anywhere
    return torch.multinomial(probs, 1, generator=generator)[0]
