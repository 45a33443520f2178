"""Accelerate's surface on ``trainer.Accelerator`` (one process): constructor arguments and their
refusals, ``state`` / ``distributed_type``, process decorators, triggers, ``split_between_processes``,
``free_memory``, automatic checkpoint naming, schedulers, the seedable sampler, ``save_pretrained``,
and the operations in ``trainer.utils``."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import (Accelerator, DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration)
from trainer.accelerate.processes import _share
from trainer.utils import (DistributedType, broadcast, gather, gather_object, pad_across_processes, reduce,
                           set_seed)


@pytest.mark.parametrize("kwargs, match", [
    ({"split_batches": True}, r"Accelerator\(split_batches=True\): not supported.*DataLoaderConfiguration"),
    ({"rng_types": ["generator"]}, r"rng_types=.*not supported.*seeded explicitly"),
    ({"kwargs_handlers": [object()]}, r"kwargs_handlers=.*DDPStrategy"),
    ({"dynamo_backend": "inductor"}, r"dynamo_backend='inductor'.*torch.compile"),
    ({"torch_tp_plugin": object()}, r"torch_tp_plugin=.*tensor parallelism"),
    ({"megatron_lm_plugin": object()}, r"megatron_lm_plugin=.*Megatron"),
    ({"deepspeed_plugins": {"a": 1}}, r"deepspeed_plugins=.*one DeepSpeed"),
    ({"parallelism_config": object()}, r"parallelism_config=.*data parallelism"),
    ({"gradient_accumulation_steps": 2, "gradient_accumulation_plugin": GradientAccumulationPlugin(num_steps=2)},
     r"gradient_accumulation_steps=2, gradient_accumulation_plugin=.*one place"),
    ({"gradient_accumulation_plugin": {"num_steps": 2}}, r"expected a trainer.GradientAccumulationPlugin"),
    ({"dataloader_config": {"split_batches": True}}, r"expected a trainer.DataLoaderConfiguration"),
    ({"project_config": "runs"}, r"expected a trainer.ProjectConfiguration"),
])
def test_unsupported_arguments_are_refused_by_name_with_the_reason(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Accelerator(cpu=True, **kwargs)


@pytest.mark.parametrize("make, match", [
    (lambda: GradientAccumulationPlugin(num_steps=0), r"num_steps=0.*positive int"),
    (lambda: GradientAccumulationPlugin(), r"num_steps=None"),
    (lambda: ProjectConfiguration(total_limit=0), r"total_limit=0.*positive int"),
    (lambda: ProjectConfiguration(save_on_each_node=True), r"save_on_each_node=True.*main process"),
])
def test_configuration_objects_check_their_values(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_setting_without_effect_warns():
    with pytest.warns(UserWarning, match=r"adjust_scheduler=False\) has no effect"):
        GradientAccumulationPlugin(num_steps=2, adjust_scheduler=False)


def test_accepted_arguments_and_the_state_view():
    accelerator = Accelerator(cpu=True, dynamo_backend="no", kwargs_handlers=[],
                              dataloader_config=DataLoaderConfiguration(non_blocking=True),
                              gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=3),
                              project_config=ProjectConfiguration(project_dir="proj"))
    assert accelerator.gradient_accumulation_steps == 3 and accelerator.gradient_state.num_steps == 3
    assert accelerator.distributed_type == DistributedType.NO == "NO"
    state = accelerator.state
    assert (state.num_processes, state.process_index, state.local_process_index) == (1, 0, 0)
    assert state.is_main_process and state.is_last_process and state.device == accelerator.device
    assert state.distributed_type is DistributedType.NO and not state.use_distributed
    assert accelerator.project_dir == "proj" and accelerator.logging_dir == "proj"
    assert "Num processes: 1" in repr(state)
    accelerator.gradient_accumulation_steps = 2
    assert accelerator.engine.accumulation_steps == 2


def test_process_decorators_triggers_and_split():
    accelerator = Accelerator(cpu=True)
    calls = []
    for decorator in (accelerator.on_main_process, accelerator.on_local_main_process, accelerator.on_last_process,
                      accelerator.on_process(process_index=0), accelerator.on_local_process(local_process_index=0)):
        decorator(lambda: calls.append(1))()
    assert accelerator.on_process(lambda: calls.append(2), process_index=1)() is None
    assert calls == [1] * 5
    with pytest.raises(TypeError, match=r"on_process\(\.\.\.\): name the process"):
        accelerator.on_process(lambda: None)
    assert not accelerator.check_trigger()
    accelerator.set_trigger()
    assert accelerator.check_trigger() and not accelerator.check_trigger()
    with accelerator.split_between_processes([1, 2, 3]) as share:
        assert share == [1, 2, 3]


def test_shares_are_contiguous_the_first_get_the_extra_and_padding_repeats_the_last():
    items = list(range(7))
    assert [_share(items, 3, r, False) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [_share(items, 3, r, True) for r in range(3)] == [[0, 1, 2], [3, 4, 4], [5, 6, 6]]
    t = torch.arange(5)
    assert [_share(t, 2, r, True).tolist() for r in range(2)] == [[0, 1, 2], [3, 4, 4]]
    shared = _share({"a": items, "b": t}, 2, 1, False)
    assert shared["a"] == [4, 5, 6] and shared["b"].tolist() == [3, 4]
    with pytest.raises(TypeError, match=r"split_between_processes\(inputs=int\)"):
        _share(3, 2, 0, False)


def test_free_memory_forgets_prepared_objects():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    assert accelerator.free_memory(model, opt) == [None, None]
    assert accelerator._models == [] and accelerator.engine.optimizers == [] and accelerator.step == 0


def test_unwrap_model_takes_accelerates_arguments():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 1)
    assert accelerator.unwrap_model(accelerator.prepare(model), keep_fp32_wrapper=False) is model


def test_backward_refuses_arguments_it_would_drop():
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 1))
    with pytest.raises(TypeError, match=r"backward\(loss, retain_graph=\.\.\.\).*not supported"):
        accelerator.backward(model(torch.ones(1, 2)).sum(), retain_graph=True)


def _tiny_setup(accelerator, lr=0.1):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return model, opt


def test_automatic_checkpoint_naming_keeps_total_limit_and_loads_the_newest(tmp_path):
    config = ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True, total_limit=2)
    accelerator = Accelerator(cpu=True, project_config=config)
    model = accelerator.prepare(torch.nn.Linear(2, 1))
    for value in (1.0, 2.0, 3.0):
        torch.nn.init.constant_(model.weight, value)
        accelerator.save_state()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["checkpoint_1", "checkpoint_2"]
    fresh = Accelerator(cpu=True, project_config=ProjectConfiguration(project_dir=str(tmp_path),
                                                                      automatic_checkpoint_naming=True))
    model2 = fresh.prepare(torch.nn.Linear(2, 1))
    fresh.load_state()
    assert torch.all(model2.weight == 3.0)
    assert fresh.project_configuration.iteration == 3  # the next save follows the newest
    with pytest.raises(ValueError, match=r"save_state\(\): no output_dir given"):
        Accelerator(cpu=True).save_state()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint_<n> directory"):
        Accelerator(cpu=True, project_config=ProjectConfiguration(project_dir=str(tmp_path / "empty"),
                                                                  automatic_checkpoint_naming=True)).load_state()


def test_an_existing_automatic_checkpoint_is_never_overwritten(tmp_path):
    os.makedirs(tmp_path / "checkpoints" / "checkpoint_0")
    accelerator = Accelerator(cpu=True, project_config=ProjectConfiguration(project_dir=str(tmp_path),
                                                                            automatic_checkpoint_naming=True))
    accelerator.prepare(torch.nn.Linear(2, 1))
    with pytest.raises(ValueError, match=r"checkpoint_0' exists already"):
        accelerator.save_state()


def test_scheduler_follows_the_optimizer_or_every_call():
    """Following the optimizer, the scheduler steps once per window and torch has nothing to warn
    about; stepped on every call (step_scheduler_with_optimizer=False), its first step comes before
    the optimizer's first, and torch's own warning says so, as with Accelerate."""
    import warnings

    for with_optimizer, expected in ((True, 2), (False, 4)):
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2,
                                  step_scheduler_with_optimizer=with_optimizer)
        model, opt = _tiny_setup(accelerator)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
        loader = DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=1)
        model, opt, sched, loader = accelerator.prepare(model, opt, sched, loader)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for (x,) in loader:
                with accelerator.accumulate(model):
                    accelerator.backward(model(x).sum())
                    opt.step()
                    sched.step()
                    opt.zero_grad()
        assert sched.last_epoch == expected
        early = [w for w in caught if "lr_scheduler.step()" in str(w.message)]
        assert len(early) == (0 if with_optimizer else 1), [str(w.message) for w in caught]


def test_a_scheduler_does_not_step_when_the_scaler_skipped_the_step():
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    model, opt = _tiny_setup(accelerator)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    accelerator.backward(model(torch.full((1, 2), float("inf"))).sum())
    opt.step()
    sched.step()
    assert opt.step_was_skipped and accelerator.optimizer_step_was_skipped and sched.last_epoch == 0


def test_sync_each_batch_still_steps_once_per_window():
    plugin = GradientAccumulationPlugin(num_steps=2, sync_each_batch=True)
    accelerator = Accelerator(cpu=True, gradient_accumulation_plugin=plugin)
    loader = accelerator.prepare(DataLoader(list(range(4)), batch_size=1))
    pattern = []
    for _ in loader:
        with accelerator.accumulate():
            pattern.append(accelerator.sync_gradients)
    assert pattern == [False, True, False, True]


def _epochs(accelerator, loader, n):
    return [torch.cat([b[0] for b in loader]).tolist() for _ in range(n)]


def test_seedable_sampler_set_epoch_counts_on_and_the_data_seed_decides():
    x = torch.arange(10.0)
    set_seed(42)
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    loader = accelerator.prepare(DataLoader(TensorDataset(x), batch_size=2, shuffle=True))
    first = _epochs(accelerator, loader, 3)
    assert first[0] != first[1]  # the epoch advances
    torch.manual_seed(7)  # the global RNG does not decide a seedable order
    loader.set_epoch(0)
    assert _epochs(accelerator, loader, 3) == first  # set_epoch(0) counts on from 0, as under Accelerate
    orders = []
    for seed in (42, 43):
        acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                                              data_seed=seed))
        orders.append(_epochs(acc, acc.prepare(DataLoader(TensorDataset(x), batch_size=2, shuffle=True)), 1))
    assert orders[0] != orders[1]


class _TinyPretrained(torch.nn.Module):
    """A stand-in for a transformers PreTrainedModel: ``save_pretrained`` / ``from_pretrained`` with a
    ``config.json`` next to safetensors weights."""

    def __init__(self, hidden: int = 3) -> None:
        super().__init__()
        self.config = {"hidden": hidden}
        self.proj = torch.nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.proj(x)

    def save_pretrained(self, save_directory, state_dict=None, safe_serialization=True, max_shard_size="5GB"):
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, "config.json"), "w") as f:
            json.dump(self.config, f)
        save_file({k: v.contiguous() for k, v in (state_dict or self.state_dict()).items()},
                  os.path.join(save_directory, "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory):
        from safetensors.torch import load_file

        with open(os.path.join(directory, "config.json")) as f:
            model = cls(**json.load(f))
        model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
        return model


def test_save_model_of_a_pretrained_model_loads_with_from_pretrained(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(_TinyPretrained())
    names = accelerator.save_model(model, str(tmp_path / "hf"))
    assert names == ["config.json", "model.safetensors"]
    loaded = _TinyPretrained.from_pretrained(str(tmp_path / "hf"))
    assert torch.equal(loaded.proj.weight, model.proj.weight)


def test_operations_on_one_process():
    t = torch.arange(3.0)
    nest = {"a": t, "b": [t * 2]}
    assert gather(nest) is nest and broadcast(nest) is nest and pad_across_processes(t) is t
    assert gather_object([0]) == [0]
    assert torch.equal(reduce(t, "sum", scale=2.0), t * 2)
    assert torch.equal(reduce(t), t)
    with pytest.raises(ValueError, match=r"reduce\(reduction='avg'\).*'sum', 'mean', 'max', 'min'"):
        reduce(t, "avg")


def test_gather_for_metrics_takes_objects_and_use_gather_object_on_one_process():
    accelerator = Accelerator(cpu=True)
    texts = ["a", "b", "c"]
    assert accelerator.gather_for_metrics(texts) == texts
    assert accelerator.gather_for_metrics(texts, use_gather_object=True) == texts
    loader = accelerator.prepare(DataLoader(texts, batch_size=2))
    assert [accelerator.gather_for_metrics(batch) for batch in loader] == [["a", "b"], ["c"]]


def test_load_checkpoint_in_model_reads_what_save_model_wrote(tmp_path):
    from trainer.strategies.checkpoint_errors import CheckpointError
    from trainer.utils import load_checkpoint_in_model

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(1)
    model = accelerator.prepare(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)))
    accelerator.save_model(model, str(tmp_path / "sharded"), max_shard_size="200B")  # several files and an index
    accelerator.save_model(model, str(tmp_path / "whole"))
    want = accelerator.unwrap_model(model).state_dict()
    for checkpoint in (tmp_path / "sharded", tmp_path / "whole", tmp_path / "whole" / "model.safetensors"):
        fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        load_checkpoint_in_model(fresh, str(checkpoint))
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in want.items())
    other = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.warns(UserWarning, match=r"unexpected keys \(2\): 1.bias, 1.weight.*matching keys only"):
        load_checkpoint_in_model(other, str(tmp_path / "whole"))  # Accelerate's default: strict=False
    with pytest.raises(CheckpointError, match="unexpected keys.*To load only the matching keys, pass strict=False"):
        load_checkpoint_in_model(other, str(tmp_path / "whole"), strict=True)
    with pytest.raises(TypeError, match=r"load_checkpoint_in_model\(model, .*device_map=...\): device maps"):
        load_checkpoint_in_model(other, str(tmp_path / "whole"), device_map="auto")
    torch.save({}, tmp_path / "model.bin")
    with pytest.raises(FileNotFoundError, match="found a file that is not .safetensors; expected the directory"):
        load_checkpoint_in_model(other, str(tmp_path / "model.bin"))
