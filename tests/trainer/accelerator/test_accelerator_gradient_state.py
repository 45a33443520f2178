"""The Accelerator's ``gradient_state``: a stack of active dataloaders, so evaluating in the middle of
training (a second prepared loader iterated inside the first) changes nothing in the training."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import Accelerator, GradientAccumulationPlugin


def _train(eval_after: int | None, sync_pattern: list[int]) -> torch.Tensor:
    """Accumulation 2 over an 8-batch loader; a 2-batch evaluation loop after micro-batch ``eval_after``."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(model.weight, 0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.arange(1.0, 9.0).unsqueeze(1)
    train = DataLoader(TensorDataset(x, 2 * x), batch_size=1)
    evaluation = DataLoader(TensorDataset(x[:2], x[:2]), batch_size=1)
    model, opt, train, evaluation = accelerator.prepare(model, opt, train, evaluation)
    for i, (xb, yb) in enumerate(train):
        with accelerator.accumulate(model):
            accelerator.backward(((model(xb) - yb) ** 2).mean())
            sync_pattern.append(int(accelerator.sync_gradients))
            opt.step()
            opt.zero_grad()
        if i + 1 == eval_after:
            with torch.no_grad():
                for xe, _ in evaluation:
                    accelerator.gather_for_metrics(model(xe))
    return model.weight.detach().clone()


def test_evaluating_mid_training_leaves_the_windows_and_the_result_unchanged():
    plain_pattern: list[int] = []
    plain = _train(None, plain_pattern)
    pattern: list[int] = []
    weight = _train(2, pattern)
    assert pattern == plain_pattern == [0, 1, 0, 1, 0, 1, 0, 1]
    assert torch.equal(weight, plain)


def test_nested_loaders_form_a_stack_with_their_own_end():
    accelerator = Accelerator(cpu=True)
    first = accelerator.prepare(DataLoader(list(range(5)), batch_size=1))
    second = accelerator.prepare(DataLoader(list(range(6)), batch_size=1))
    state = accelerator.gradient_state
    assert state.active_dataloader is None and not state.end_of_dataloader and state.remainder == -1
    for i, _ in enumerate(first):
        assert state.active_dataloader is first
        assert state.end_of_dataloader == (i == len(first) - 1)
        if i == 1:
            for j, _ in enumerate(second):
                assert state.active_dataloader is second
                assert state.end_of_dataloader == (j == len(second) - 1)
            assert state.active_dataloader is first and not state.end_of_dataloader
    assert state.active_dataloader is None


def test_breaking_out_of_an_inner_loop_pops_it():
    accelerator = Accelerator(cpu=True)
    outer, inner = accelerator.prepare(DataLoader(list(range(3)), batch_size=1), DataLoader(list(range(9)),
                                                                                            batch_size=2))
    for _ in outer:
        for j, _ in enumerate(inner):
            assert accelerator.gradient_state.remainder == 1  # 9 samples, batches of 2: one real sample last
            if j == 1:
                break
        assert accelerator.gradient_state.active_dataloader is outer
    assert accelerator.gradient_state.active_dataloader is None


def test_a_window_closes_at_the_end_of_the_loader_unless_told_not_to():
    for sync_with_dataloader, expected in ((True, [0, 0, 1, 1] * 2), (False, [0, 0, 1, 0, 0, 1, 0, 0])):
        plugin = GradientAccumulationPlugin(num_steps=3, sync_with_dataloader=sync_with_dataloader)
        accelerator = Accelerator(cpu=True, gradient_accumulation_plugin=plugin)
        loader = accelerator.prepare(DataLoader(list(range(4)), batch_size=1))
        pattern = []
        for _ in range(2):
            for _ in loader:
                with accelerator.accumulate():
                    pattern.append(int(accelerator.sync_gradients))
        assert pattern == expected
        assert accelerator.gradient_state.plugin_kwargs["sync_with_dataloader"] is sync_with_dataloader
