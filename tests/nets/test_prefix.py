"""dlexp/nets/prefix.py: splitting a net at its frozen prefix, and each net's as_sequential view."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dlexp.nets.classifiers import MLP, VGG, ConvNet, LeNet5
from dlexp.nets.prefix import NotCacheable, as_sequential, split_frozen_prefix


def test_split_takes_parameter_free_layers_and_stops_at_dropout():
    """Frozen Linear -> the prefix also takes the ReLU after it, not the dropout; the rest is the suffix."""
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    split = split_frozen_prefix(net, list(net[0].parameters()))
    assert [type(m) for m in split.prefix] == [nn.Linear, nn.ReLU]
    assert [type(m) for m in split.suffix] == [nn.Dropout, nn.Linear]
    assert split.suffix[1] is net[3]  # shared, not copied
    with pytest.raises(NotCacheable, match=r"dropout 2 \(p=0.5\) in the frozen layers"):
        split_frozen_prefix(net, list(net.parameters()))
    with pytest.raises(NotCacheable, match="nothing left to train"):
        split_frozen_prefix(net[:2], list(net[0].parameters()))
    with pytest.raises(NotCacheable, match="no as_sequential"):
        split_frozen_prefix(nn.Identity(), [])


@pytest.mark.parametrize("make_net, shape", [
    (lambda: MLP(1, 28, 10, hidden=[16, 8], batch_norm="all", dropout=0.2), (1, 28, 28)),
    (lambda: ConvNet(1, 28, 10, channels=[4, 8], dropout=0.2), (1, 28, 28)),
    (lambda: LeNet5(1, 28, 10, dropout=0.2), (1, 28, 28)),
    (lambda: VGG(3, 32, 10, depth=11, width=4, hidden=[16]), (3, 32, 32)),
], ids=["mlp", "convnet", "lenet5", "vgg"])
def test_as_sequential_computes_the_forward(make_net, shape):
    """Each net's chain view holds the net's own parameters and gives its forward's output."""
    torch.manual_seed(0)
    net = make_net().eval()
    chain = as_sequential(net)
    assert {id(p) for p in chain.parameters()} == {id(p) for p in net.parameters()}
    x = torch.randn(3, *shape)
    assert torch.equal(chain(x), net(x))
