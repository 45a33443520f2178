"""trainer.utils.find_executable_batch_size (Accelerate's decorator) and rank_zero_only, with an
injected out-of-memory error."""

from __future__ import annotations

import pytest
import torch

from trainer.utils import find_executable_batch_size, rank_zero_only


def test_halves_after_an_out_of_memory_error_until_it_fits():
    tried = []

    @find_executable_batch_size(starting_batch_size=128)
    def train(batch_size, model, scale=1):
        tried.append(batch_size)
        if batch_size > 20:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return batch_size * scale

    assert train(torch.nn.Linear(1, 1), scale=2) == 32
    assert tried == [128, 64, 32, 16] or tried == [128, 64, 32][:0] + tried  # noqa: the first fit is 16
    assert tried == [128, 64, 32, 16]


def test_runtime_errors_that_mean_out_of_memory_are_retried_others_raise():
    tried = []

    @find_executable_batch_size(starting_batch_size=8)
    def train(batch_size):
        tried.append(batch_size)
        if batch_size > 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        raise ValueError("a real bug")

    with pytest.raises(ValueError, match="a real bug"):
        train()
    assert tried == [8, 4, 2]


def test_reaching_zero_raises():
    @find_executable_batch_size(starting_batch_size=4)
    def train(batch_size):
        raise torch.OutOfMemoryError("injected")

    with pytest.raises(RuntimeError, match=r"ran out of memory down to a batch size of 1 \(started at 4\)"):
        train()


def test_passing_the_batch_size_yourself_is_an_error():
    @find_executable_batch_size(starting_batch_size=4)
    def train(batch_size, model):
        return batch_size

    with pytest.raises(TypeError, match=r"passes the batch size as train's first argument"):
        train(4, "model")


def test_bad_starting_batch_size():
    with pytest.raises(ValueError, match=r"starting_batch_size=0\): expected a positive int"):
        find_executable_batch_size(lambda b: b, starting_batch_size=0)


def test_rank_zero_only_runs_on_rank_zero_only(monkeypatch):
    calls = []
    report = rank_zero_only(lambda text: calls.append(text) or text)
    monkeypatch.setenv("RANK", "1")
    assert report("a") is None and calls == []
    monkeypatch.setenv("RANK", "0")
    assert report("b") == "b" and calls == ["b"]


def test_a_hand_written_accelerator_loop_finds_the_size_that_fits():
    from torch.utils.data import DataLoader

    from trainer import Accelerator
    from tests.trainer.loops.test_oom_split import Net, _Nested

    accelerator = Accelerator()
    model = Net(limit=5)

    @find_executable_batch_size(starting_batch_size=16)
    def train(batch_size):
        net, optimizer, loader = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                                     DataLoader(_Nested(12), batch_size=batch_size))
        for i, batch in enumerate(loader):
            optimizer.zero_grad()
            accelerator.backward(net.training_step(batch, i))
            optimizer.step()
        return batch_size

    assert train() == 4 and model.sizes[:3] == [12, 8, 4]  # 12 samples: the first batch holds 12
