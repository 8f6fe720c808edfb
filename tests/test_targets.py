import pytest
import torch
from torch import nn

from sparsetrain.sparsity import SparsityError, select_targets


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.norm = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(nn.Conv1d(8, 8, 1), nn.Conv3d(8, 4, 1))
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 2)
        self.tied = self.head  # same module twice: listed once


def test_default_is_conv_and_linear_weights_in_modules_order():
    targets = select_targets(Net())
    assert [t.name for t in targets] == ["stem.weight", "blocks.0.weight", "blocks.1.weight", "head.weight"]
    assert targets[0].module_name == "stem" and targets[0].shape == (8, 3, 3, 3) and targets[0].numel == 216


def test_include_by_type_and_regex_exclude_by_regex():
    net = Net()
    assert [t.name for t in select_targets(net, include=nn.Linear)] == ["head.weight"]
    names = [t.name for t in select_targets(net, include=[nn.Conv2d, r"^embed\.weight$", r"head\.bias"])]
    assert names == ["stem.weight", "embed.weight", "head.bias"]
    assert [t.name for t in select_targets(net, exclude=r"^blocks\.")] == ["stem.weight", "head.weight"]
    assert [t.name for t in select_targets(net, exclude=[nn.Conv3d, nn.Linear])] == ["stem.weight", "blocks.0.weight"]


def test_shared_parameters_are_listed_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert [t.name for t in select_targets(model)] == ["0.weight"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"include": "nothing_here"}, "include selector 'nothing_here' matches no parameter of Net"),
        ({"exclude": nn.GRU}, "exclude selector GRU matches no parameter of Net"),
        ({"exclude": ".*"}, "the selection holds no prunable parameter of Net"),
        ({"include": "("}, "include pattern '\\(' is not a valid regex"),
        ({"include": [3]}, "selector 3 must be an nn.Module subclass or a regex string"),
    ],
)
def test_selection_errors(kwargs, message):
    with pytest.raises(SparsityError, match=message):
        select_targets(Net(), **kwargs)


def test_model_without_conv_or_linear_is_an_empty_selection():
    with pytest.raises(SparsityError, match="holds no prunable parameter of BatchNorm1d"):
        select_targets(nn.BatchNorm1d(3))
