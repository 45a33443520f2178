"""FSDPStrategy(auto_wrap_policy=SomeClass): one module class is read as the set of that one class (it
passed the argument check, being callable, and then failed with "type object is not iterable")."""

from __future__ import annotations

import torch

from trainer.strategies import FSDPStrategy


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(3, 1)))


def test_one_class_wraps_its_instances_as_a_set_of_it_does() -> None:
    net = _net()
    linears = [net[0], net[2][0]]
    assert FSDPStrategy(auto_wrap_policy=torch.nn.Linear)._wrap_targets(net) == linears
    assert FSDPStrategy(auto_wrap_policy={torch.nn.Linear})._wrap_targets(net) == linears
    assert FSDPStrategy(auto_wrap_policy=torch.nn.Conv1d)._wrap_targets(net) == []
