"""Accelerate's free functions and state names under ``trainer``: ``trainer.state`` (PartialState,
AcceleratorState, GradientState), ``trainer.logging.get_logger``, ``Accelerator.save``, the free
``prepare_data_loader`` / ``skip_first_batches`` / ``synchronize_rng_states`` / ``SeedableRandomSampler``,
``LocalSGD``, ``notebook_launcher``, and pickling/copying prepared objects. One process here; the
2-process checks run in one spawn at the end (marked slow)."""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from tests.helpers.distributed import run_distributed
from trainer import Accelerator
from trainer.data_loader import (BatchSamplerShard, SeedableRandomSampler, prepare_data_loader,
                                 skip_first_batches)
from trainer.state import AcceleratorState, GradientState, PartialState


# -- point 3: the state names ------------------------------------------------------------------------
def test_accelerator_state_without_an_accelerator_says_how_to_get_one():
    import gc

    gc.collect()  # Accelerators of earlier tests are gone once collected
    from trainer.accelerate import state

    if any(ref() is not None for ref in state._accelerators):
        pytest.skip("an Accelerator of another test is still referenced in this process")
    with pytest.raises(RuntimeError, match=r"AcceleratorState\(\): no Accelerator exists.*Accelerator\(\.\.\.\)"):
        AcceleratorState()
    with pytest.raises(RuntimeError, match=r"GradientState\(\): no Accelerator exists"):
        GradientState()


def test_the_state_names_find_the_newest_live_accelerator():
    first = Accelerator(cpu=True)
    assert AcceleratorState() is first.state and GradientState() is first.gradient_state
    second = Accelerator(cpu=True, gradient_accumulation_steps=3)
    assert AcceleratorState() is second.state and GradientState().num_steps == 3
    assert isinstance(second.state, AcceleratorState) and isinstance(second.gradient_state, GradientState)
    AcceleratorState._reset_state()  # Accelerate clears its singleton; here nothing breaks
    assert second.prepare(torch.nn.Linear(1, 1)) is not None
    with pytest.raises(TypeError, match=r"AcceleratorState\(mixed_precision=\.\.\.\).*Accelerator\(\.\.\.\)"):
        AcceleratorState(mixed_precision="bf16")
    del first, second


def test_partial_state_reads_the_environment_on_one_process():
    state = PartialState()
    assert (state.num_processes, state.process_index, state.is_main_process, state.is_last_process) == (1, 0, True,
                                                                                                         True)
    assert state.device == torch.device("cpu") or state.device.type == "cuda"
    with state.main_process_first():
        pass
    with state.split_between_processes([1, 2, 3]) as share:
        assert share == [1, 2, 3]
    assert state.on_main_process(lambda: "ran")() == "ran"
    with pytest.raises(TypeError, match=r"PartialState\(backend_name=\.\.\.\).*expected cpu="):
        PartialState(backend_name="gloo")


# -- point 2: logging, save, free functions -----------------------------------------------------------
def test_get_logger_takes_main_process_only_and_in_order(caplog):
    from trainer.logging import get_logger

    logger = get_logger("trainer.tests.free", log_level="INFO")
    with caplog.at_level(logging.INFO, logger="trainer.tests.free"):
        logger.info("once", main_process_only=True)
        logger.info("every", main_process_only=False, in_order=True)
        logger.debug("hidden")
    assert [r.getMessage() for r in caplog.records] == ["once", "every"]
    with pytest.raises(ValueError, match=r"main_process_only=True, in_order=True.*main_process_only=False"):
        logger.info("x", in_order=True)


def test_accelerator_save_writes_what_weights_only_loading_and_safetensors_read(tmp_path):
    from safetensors.torch import load_file

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    state = model.state_dict()
    accelerator.save(state, tmp_path / "pytorch_model.bin")
    loaded = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    accelerator.save(state, tmp_path / "model.safetensors", safe_serialization=True)
    assert all(torch.equal(load_file(tmp_path / "model.safetensors")[k], state[k]) for k in state)
    with pytest.raises(TypeError, match=r"safe_serialization=True.*dict of tensors"):
        accelerator.save({"step": 3}, tmp_path / "x.safetensors", safe_serialization=True)


def test_free_prepare_data_loader_and_skip_first_batches():
    loader = prepare_data_loader(DataLoader(range(10), batch_size=4), num_processes=1, process_index=0,
                                 put_on_device=True)
    assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b.tolist() for b in skip_first_batches(loader, 2)] == [[8, 9]]
    with pytest.raises(ValueError, match=r"rng_types=.*not supported"):
        prepare_data_loader(DataLoader(range(4)), num_processes=1, process_index=0, rng_types=["generator"])
    with pytest.raises(ValueError, match=r"num_batches=-1.*int >= 0"):
        skip_first_batches(loader, -1)


def test_seedable_random_sampler_depends_on_seed_and_epoch_only():
    torch.manual_seed(0)
    a = SeedableRandomSampler(range(20), seed=7)
    first, second = list(a), list(a)  # the epoch advances after a full pass
    torch.manual_seed(123)
    b = SeedableRandomSampler(range(20), seed=7)
    assert list(b) == first and list(b) == second and first != second
    b.set_epoch(0)
    assert list(b) == first
    assert list(SeedableRandomSampler(range(20), seed=8)) != first


# -- point 5: custom batch samplers are dealt; pickling and copying ---------------------------------
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), batch=st.integers(1, 7), world=st.integers(1, 4), drop_last=st.booleans(),
       even=st.booleans(), split=st.booleans())
@example(n=7, batch=2, world=2, drop_last=False, even=True, split=False)
@example(n=3, batch=1, world=2, drop_last=False, even=False, split=False)
@example(n=1, batch=4, world=4, drop_last=False, even=True, split=True)
def test_batch_sampler_shards_deal_the_single_process_batches(n, batch, world, drop_last, even, split):
    if split:
        batch *= world
    plain = list(BatchSampler(SequentialSampler(range(n)), batch, drop_last))
    shards = [list(BatchSamplerShard(BatchSampler(SequentialSampler(range(n)), batch, drop_last), world, rank,
                                     split_batches=split, even_batches=even)) for rank in range(world)]
    for rank, shard in enumerate(shards):
        assert len(shard) == len(BatchSamplerShard(BatchSampler(SequentialSampler(range(n)), batch, drop_last), world,
                                                   rank, split_batches=split, even_batches=even))
    steps = max(len(s) for s in shards)
    dealt = [i for step in range(steps) for s in shards if step < len(s) for i in s[step]]
    order = [i for b in plain for i in b]
    if even:
        assert len({len(s) for s in shards}) == 1  # every process runs the same number of steps
        assert dealt[:len(order)] == order[:len(dealt)]  # rank order is the single-process order...
        if not drop_last:
            assert set(dealt) == set(order)  # ...and the repeats that complete the last step come from the start
    else:
        assert dealt == order[:len(dealt)] and (drop_last or dealt == order)


def test_a_custom_batch_sampler_is_dealt_and_kept():
    class Halves:
        def __init__(self, n):
            self.n = n

        def __iter__(self):
            yield from ([list(range(i, min(i + 3, self.n)))] for i in range(0, self.n, 3))

        def __len__(self):
            return -(-self.n // 3)

    shard0 = prepare_data_loader(DataLoader(range(9), batch_sampler=Halves(9)), num_processes=2, process_index=0)
    assert isinstance(shard0.batch_sampler.batch_sampler, Halves)


def test_a_prepared_loader_and_the_accelerator_pickle_and_copy():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    loader = DataLoader(TensorDataset(torch.arange(6.0)), batch_size=2, shuffle=True)
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    for obj in (loader, scheduler, accelerator):
        copied = copy.deepcopy(obj)  # recursed forever through __getattr__ before the wrapped object existed
        unpickled = pickle.loads(pickle.dumps(obj))
        assert type(copied) is type(obj) and type(unpickled) is type(obj)
    assert len(pickle.loads(pickle.dumps(loader))) == 3
    assert pickle.loads(pickle.dumps(accelerator)).state.__dict__ == accelerator.state.__dict__


def test_local_sgd_and_notebook_launcher_on_one_process():
    from trainer import notebook_launcher
    from trainer.local_sgd import LocalSGD

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(1, 1))
    with LocalSGD(accelerator=accelerator, model=model, local_sgd_steps=2) as local_sgd:
        local_sgd.step()
        assert not local_sgd.enabled  # one process: nothing to average
    with pytest.raises(ValueError, match=r"local_sgd_steps=0.*positive int"):
        LocalSGD(accelerator=accelerator, model=model, local_sgd_steps=0)
    ran = []
    notebook_launcher(ran.append, args=("once",), num_processes=1)
    assert ran == ["once"]
    with pytest.raises(ValueError, match=r"num_nodes=2.*one machine"):
        notebook_launcher(ran.append, num_nodes=2)


def test_local_sgd_under_a_sharded_strategy_says_why_not():
    """The strategy refuses LocalSGD with its own reason (FSDP: each process holds a shard)."""
    from trainer.local_sgd import LocalSGD
    from trainer.strategies import FSDPStrategy
    from trainer.utils import FullyShardedDataParallelPlugin
    from trainer.utils.exceptions import MisconfigurationException

    accelerator = Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin())
    try:
        model = accelerator.prepare(torch.nn.Linear(2, 2))
        with pytest.raises(MisconfigurationException, match=r"LocalSGD with FSDPStrategy: each process holds only "
                                                            r"its shard.*Drop LocalSGD or use the DDP strategy"):
            LocalSGD(accelerator=accelerator, model=model, local_sgd_steps=2)
        assert isinstance(accelerator.strategy, FSDPStrategy)
    finally:
        accelerator.end_training()


# -- 2 processes --------------------------------------------------------------------------------------
def _two_processes() -> dict:
    import io
    import contextlib

    from trainer.data_loader import prepare_data_loader as free_prepare
    from trainer.local_sgd import LocalSGD
    from trainer.logging import get_logger
    from trainer.utils import synchronize_rng_states

    out: dict = {}
    state = PartialState()  # before any Accelerator: joins the process group
    rank = state.process_index
    out["state"] = (state.num_processes, rank, state.is_main_process, state.distributed_type.value)
    order = []
    with state.main_process_first():
        order.append(rank)
    state.wait_for_everyone()
    with state.split_between_processes(list(range(5)), apply_padding=True) as share:
        out["share"] = share
    out["main_only"] = state.on_main_process(lambda: "ran")()
    # the logger: main process only unless asked, in rank order when asked
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = get_logger(f"trainer.tests.two.{rank}", log_level="INFO")
    logger.logger.addHandler(handler)
    logger.info("main only")
    logger.info(f"rank {rank}", main_process_only=False, in_order=True)
    logger.logger.removeHandler(handler)
    out["log"] = stream.getvalue().split()
    # synchronize_rng_states: the processes' streams differ, then are process 0's
    torch.manual_seed(rank)
    generator = torch.Generator().manual_seed(100 + rank)
    synchronize_rng_states(["torch", "generator"], generator=generator)
    out["rng"] = (torch.rand(1).item(), torch.rand(1, generator=generator).item())
    # a custom batch sampler over a shuffled sampler, dealt (it failed with KeyError: 0 in collate)
    torch.manual_seed(rank)  # the processes' global streams differ: process 0's order is used by both
    loader = free_prepare(DataLoader(TensorDataset(torch.arange(10)),
                                     batch_sampler=BatchSampler(RandomSampler(range(10)), 4, False)))
    out["custom"] = [b[0].tolist() for b in loader]
    # LocalSGD: no all-reduce inside, parameters averaged every 2 steps and at the end
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    weights = []
    with LocalSGD(accelerator=accelerator, model=model, local_sgd_steps=2) as local_sgd:
        for step in range(3):
            accelerator.backward(model(torch.full((1, 1), float(rank + 1))).sum())
            optimizer.step()
            optimizer.zero_grad()
            local_sgd.step()
            weights.append(accelerator.unwrap_model(model).weight.item())
    weights.append(accelerator.unwrap_model(model).weight.item())
    out["local_sgd"] = weights
    # even_batches=False: an evaluation loader is uneven; training on it is refused outside join
    from trainer import DataLoaderConfiguration

    uneven = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(even_batches=False))
    evaluation = uneven.prepare(DataLoader(TensorDataset(torch.arange(5.0)), batch_size=2))
    out["uneven"] = [b[0].tolist() for b in evaluation]
    model = uneven.prepare(torch.nn.Linear(1, 1))
    try:
        for (xb,) in evaluation:
            uneven.backward(model(xb[:, None]).sum())
        out["refused"] = ""
    except RuntimeError as err:
        out["refused"] = str(err)
    with contextlib.suppress(Exception):
        uneven.wait_for_everyone()
    # an IterableDataset: process 0 reads the stream and dispatches each process its share
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            if uneven.process_index != 0:
                raise AssertionError("only process 0 reads a dispatched stream")
            yield from (torch.tensor([float(i)]) for i in range(7))

    dispatched = Accelerator(cpu=True)
    stream = dispatched.prepare(DataLoader(Stream(), batch_size=2))
    out["stream"] = [(xb.flatten().tolist(), dispatched.gather_for_metrics(xb).flatten().tolist()) for xb in stream]
    return out


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_free_functions_on_two_processes():
    ranks = run_distributed(_two_processes, timeout=200)
    assert [r["state"] for r in ranks] == [(2, 0, True, "MULTI_CPU"), (2, 1, False, "MULTI_CPU")]
    assert [r["share"] for r in ranks] == [[0, 1, 2], [3, 4, 4]]
    assert [r["main_only"] for r in ranks] == ["ran", None]
    assert ranks[0]["log"] == ["main", "only", "rank", "0"] and ranks[1]["log"] == ["rank", "1"]
    assert ranks[0]["rng"] == ranks[1]["rng"]
    dealt = [i for step in zip(ranks[0]["custom"], ranks[1]["custom"]) for batch in step for i in batch]
    assert sorted(dealt[:10]) == list(range(10)) and len(ranks[0]["custom"]) == len(ranks[1]["custom"]) == 2
    w0, w1 = ranks[0]["local_sgd"], ranks[1]["local_sgd"]
    assert w0[0] != w1[0]  # step 1: each process stepped on its own gradient
    assert w0[1] == pytest.approx(w1[1]) and w0[3] == pytest.approx(w1[3])  # averaged at step 2 and at the end
    assert w0[2] != w1[2]
    assert ranks[0]["uneven"] == [[0.0, 1.0], [4.0]] and ranks[1]["uneven"] == [[2.0, 3.0]]
    assert all("even_batches=False" in r["refused"] and "join_uneven_inputs" in r["refused"] for r in ranks)
    # dispatch_batches (the default for an IterableDataset): 7 items, 2 per process and step
    assert [local for local, _ in ranks[0]["stream"]] == [[0.0, 1.0], [4.0, 5.0]]
    assert [local for local, _ in ranks[1]["stream"]] == [[2.0, 3.0], [6.0, 4.0]]  # completed from the step's start
    assert [v for _, gathered in ranks[0]["stream"] for v in gathered] == [float(i) for i in range(7)]


def _launched(folder: str) -> None:
    import os

    accelerator = Accelerator(cpu=True)
    value = accelerator.reduce(torch.tensor([accelerator.process_index + 1.0]), "sum").item()
    with open(os.path.join(folder, f"rank{accelerator.process_index}"), "w") as f:
        f.write(f"{accelerator.num_processes} {value}")
    accelerator.end_training()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_notebook_launcher_starts_processes_from_a_function(tmp_path):
    from trainer import notebook_launcher

    import signal

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    before = [signal.getsignal(s) for s in signals]
    notebook_launcher(_launched, args=(str(tmp_path),), num_processes=2)
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == ["2 3.0", "2 3.0"]
    # torch's agent installed its handlers for these; the caller's are back (Ctrl-C is KeyboardInterrupt again)
    assert [signal.getsignal(s) for s in signals] == before


# -- exact resume with the loader's own generator -----------------------------------------------------
def _generator_orders(state_dir: str, stop: int | None, resume: bool = False) -> list:
    """3 epochs of 3 batches of a loader shuffled by its own generator=; saved after the ``stop``-th
    batch, or resumed from there Accelerate's way (load_state, skip_first_batches)."""
    from trainer.utils import set_seed

    set_seed(0)
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(list(range(6)), batch_size=2, shuffle=True,
                                            generator=torch.Generator().manual_seed(5)))
    seen, start_epoch, skip = [], 0, 0
    if resume:
        accelerator.load_state(state_dir)
        start_epoch, skip = divmod(stop + 1, 3)
    for epoch in range(start_epoch, 3):
        batches = accelerator.skip_first_batches(loader, skip) if resume and epoch == start_epoch else loader
        for i, batch in enumerate(batches, start=skip if resume and epoch == start_epoch else 0):
            seen.append(batch.tolist())
            if not resume and stop is not None and epoch * 3 + i == stop:
                accelerator.save_state(state_dir)
                return seen
    return seen


@pytest.mark.parametrize("stop", [2, 4, 5])
def test_a_loader_with_its_own_generator_resumes_exactly_at_an_epochs_end_and_inside(tmp_path, stop):
    """Saved between passes, the generator's state was not kept: resumed, the next epoch drew the first
    epoch's order again from the freshly seeded generator."""
    state = str(tmp_path / "state")
    resumed = _generator_orders(state, stop) + _generator_orders(state, stop, resume=True)
    assert resumed == _generator_orders(state, None)
