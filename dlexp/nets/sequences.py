"""Dense nets for multi-hot and tabular rows, and word-embedding and 1-D convolutional classifiers for token
sequences (the Keras notes' IMDB, Reuters and Boston models). Token ids: (B, T) int64, 0 = padding."""
from __future__ import annotations

import torch
from torch import nn

from dlexp.nets.classifiers import make_activation
from dlexp.nets.recurrent import RecurrentStack, last_step


class DenseNet(nn.Module):
    """Stacked dense layers on a feature row (B, F) -> (B, num_outputs): IMDB 16-16-1, Reuters 64-64-46 (and its
    64-4-46 bottleneck), the Boston regressor 64-64-1. Raw outputs: logits, or the regressed value."""

    input_kinds = ("multi_hot", "tabular")  # the data kinds it takes (checked against dataset.kind before a run)

    def __init__(self, in_features: int, hidden: list[int] = (16, 16), num_outputs: int = 1,
                 activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), make_activation(activation)]
            layers += [nn.Dropout(dropout)] if dropout else []
            in_features = width
        self.body = nn.Sequential(*layers, nn.Linear(in_features, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1).float())


class EmbeddingClassifier(nn.Module):
    """The notes' first embedding model: Embedding(vocab, 8) on 20-word sequences, Flatten, Dense (hidden sizes,
    then num_outputs): (B, seq_len) ids -> (B, num_outputs)."""

    input_kinds = ("tokens",)

    def __init__(self, vocab_size: int, embedding_dim: int, seq_len: int, num_outputs: int,
                 hidden: list[int] = (), dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.head = DenseNet(seq_len * embedding_dim, list(hidden), num_outputs, dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x).flatten(1)))  # (B, T) -> (B, T*E) -> (B, outputs)


def conv_front(embedding_dim: int, channels: list[int], kernel_size: int, pool: int) -> nn.Sequential:
    """Conv1d + ReLU per channel count, max pooling between them, on (B, E, T). 'same' padding and ceil-mode
    pooling (Keras used 'valid'): any sequence length gives at least one step."""
    if not channels or kernel_size < 1 or pool < 1:
        raise ValueError(f"model.channels must be non-empty, model.kernel_size and model.pool >= 1, got {channels}, "
                         f"{kernel_size}, {pool}")
    layers: list[nn.Module] = []
    c_in = embedding_dim
    for i, c in enumerate(channels):
        layers += [nn.MaxPool1d(pool, ceil_mode=True)] if i > 0 and pool > 1 else []
        layers += [nn.Conv1d(c_in, c, kernel_size, padding=kernel_size // 2), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers)


class Conv1DClassifier(nn.Module):
    """The notes' 1-D convnet: Embedding, Conv1D(32, 7), MaxPool1D(5), Conv1D(32, 7), GlobalMaxPool, Dense."""

    input_kinds = ("tokens",)

    def __init__(self, vocab_size: int, embedding_dim: int, num_outputs: int, channels: list[int] = (32, 32),
                 kernel_size: int = 7, pool: int = 5, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.features = conv_front(embedding_dim, list(channels), kernel_size, pool)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.embed(x).transpose(1, 2))  # (B, T) -> (B, E, T) -> (B, C, T')
        return self.fc(self.dropout(h.amax(dim=2)))  # global max pool over time


class Conv1DGRU(nn.Module):
    """The notes' CNN + RNN for long sequences: a 1-D conv front (Conv1D(32, 5), MaxPool1D(3), Conv1D(32, 5))
    shortens the sequence cheaply, a GRU reads the features in order (dropout 0.1, recurrent dropout 0.5)."""

    input_kinds = ("tokens",)

    def __init__(self, vocab_size: int, embedding_dim: int, num_outputs: int, channels: list[int] = (32, 32),
                 kernel_size: int = 5, pool: int = 3, hidden_size: int = 32, dropout: float = 0.0,
                 recurrent_dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.features = conv_front(embedding_dim, list(channels), kernel_size, pool)
        self.rnn = RecurrentStack(channels[-1], hidden_size, "gru", dropout=dropout,
                                  recurrent_dropout=recurrent_dropout)
        self.fc = nn.Linear(hidden_size, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.embed(x).transpose(1, 2)).transpose(1, 2)  # (B, T', C)
        return self.fc(last_step(self.rnn(h), self.rnn.hidden_size))
