"""``accelerator.prepared``: the public registry of what an Accelerator prepared, which save_state and
load_state read (trainer/persistence/accelerator_state.py); Accelerate's private list names stay as
aliases of the very same lists, for user code that reads them."""

from __future__ import annotations

import ast

import torch
from torch.utils.data import DataLoader, TensorDataset

from tests import ROOT
from trainer import Accelerator


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


def _prepared(counter: Counter) -> tuple:
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
    accelerator.register_for_checkpointing(counter)
    return accelerator, *accelerator.prepare(model, opt, loader, sched)


def test_the_registry_holds_what_was_prepared_in_order():
    counter = Counter()
    accelerator, model, opt, loader, sched = _prepared(counter)
    reg = accelerator.prepared
    assert reg.models == [model] and reg.optimizers == [opt] and reg.schedulers == [sched]
    assert reg.dataloaders == [loader] and reg.custom_objects == [counter]
    # Accelerate's private names: the registry's own lists, not copies
    assert accelerator._models is reg.models and accelerator._optimizers is reg.optimizers
    assert accelerator._schedulers is reg.schedulers and accelerator._dataloaders is reg.dataloaders
    assert accelerator._custom_objects is reg.custom_objects
    accelerator.free_memory()
    assert (reg.models, reg.optimizers, reg.schedulers, reg.dataloaders) == ([], [], [], [])
    assert reg.custom_objects == [counter]  # registered objects outlive free_memory, as in Accelerate


def test_save_state_and_load_state_go_by_the_registry(tmp_path):
    counter = Counter()
    accelerator, model, opt, loader, sched = _prepared(counter)
    extra = Counter()
    extra.n = 7
    accelerator.prepared.custom_objects.append(extra)  # what the registry holds is what is saved
    counter.n = 3
    accelerator.save_state(str(tmp_path / "state"))
    counter.n, extra.n = 0, 0
    with torch.no_grad():
        model.weight.zero_()
    accelerator.load_state(str(tmp_path / "state"))
    assert (counter.n, extra.n) == (3, 7)
    assert model.weight.abs().sum() > 0


def test_accelerator_state_reads_no_private_of_the_accelerator():
    path = ROOT / "trainer" / "persistence" / "accelerator_state.py"
    bad = [f"line {node.lineno}: .{node.attr}" for node in ast.walk(ast.parse(path.read_text()))
           if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
           and isinstance(node.value, (ast.Name, ast.Attribute))
           and (node.value.id if isinstance(node.value, ast.Name) else node.value.attr) == "accelerator"]
    assert not bad, "read accelerator.prepared (the public registry) instead: " + ", ".join(bad)
