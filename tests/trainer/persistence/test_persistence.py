"""One persistence story: both doors write one format through one writer per kind (a file, a
directory), and what one door wrote the other tools read."""

from __future__ import annotations

import re

import pytest
import torch

from tests.helpers.models import BoringModel, regression_loader
from trainer import Accelerator
from trainer.persistence.trainer_checkpoint import FORMAT_VERSION
from trainer.strategies.checkpoint_io import safe_load
from tests import ROOT



def _prepared(n_models: int = 1):
    accelerator = Accelerator(cpu=True)
    models = [BoringModel(seed=i) for i in range(n_models)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in models]
    scheds = [torch.optim.lr_scheduler.StepLR(o, 1, 0.5) for o in opts]
    prepared = accelerator.prepare(*models, *opts, *scheds)
    return accelerator, prepared[:n_models], prepared[n_models:2 * n_models]


def _train(accelerator, models, opts, steps: int = 2) -> None:
    for (x, y), _ in zip(regression_loader(16, 8), range(steps)):
        loss = sum(torch.nn.functional.mse_loss(m(x), y) for m in models)
        accelerator.backward(loss)
        for o in opts:
            o.step()
            o.zero_grad()


def test_save_state_writes_the_trainers_layout(tmp_path):
    accelerator, (model,), (opt,) = _prepared()
    _train(accelerator, [model], [opt])
    accelerator.save_state(str(tmp_path / "state"))
    state = safe_load(str(tmp_path / "state" / "state.ckpt"))
    assert state["format_version"] == FORMAT_VERSION == 2
    assert torch.equal(state["state_dict"]["layer.weight"], accelerator.unwrap_model(model).layer.weight)
    assert state["optimizer_states"][0]["state"] and len(state["lr_schedulers"]) == 1
    assert set(state["rng"]) == {0} and state["accelerator"]["num_models"] == 1
    assert state["metadata"]["strategy"] == "SingleDeviceStrategy"


def test_the_trainers_tools_read_an_accelerator_state(tmp_path):
    from trainer.cli.merge_weights import full_weights

    accelerator, (model,), (opt,) = _prepared()
    _train(accelerator, [model], [opt])
    accelerator.save_state(str(tmp_path / "state"))
    weights = full_weights(str(tmp_path / "state" / "state.ckpt"))
    assert torch.equal(weights["layer.weight"], accelerator.unwrap_model(model).layer.weight)
    loaded = BoringModel.load_from_checkpoint(str(tmp_path / "state" / "state.ckpt"))
    assert torch.equal(loaded.layer.weight, accelerator.unwrap_model(model).layer.weight)


def test_several_models_round_trip_and_a_count_mismatch_is_refused(tmp_path):
    accelerator, models, opts = _prepared(2)
    _train(accelerator, models, opts)
    accelerator.save_state(str(tmp_path / "state"))
    saved = [accelerator.unwrap_model(m).layer.weight.detach().clone() for m in models]
    momentum = [o.optimizer.state[accelerator.unwrap_model(m).layer.weight]["momentum_buffer"].clone()
                for m, o in zip(models, opts)]
    _train(accelerator, models, opts)  # move away from the saved state
    accelerator.load_state(str(tmp_path / "state"))
    for m, o, w, b in zip(models, opts, saved, momentum):
        assert torch.equal(accelerator.unwrap_model(m).layer.weight, w)
        assert torch.equal(o.optimizer.state[accelerator.unwrap_model(m).layer.weight]["momentum_buffer"], b)
    other, _, _ = _prepared(1)
    with pytest.raises(ValueError, match=r"holds 2 models but this Accelerator has 1 prepared"):
        other.load_state(str(tmp_path / "state"))


def test_one_writer_per_kind_no_other_code_renames_or_makes_temporaries():
    """Files go through atomic_write (checkpoint_io.py), directories through atomic_directory
    (checkpoint_directories.py). Not checkpoints: the CLI's YAML config file and the scratch directory
    of `trainer test`."""
    allowed = {"strategies/checkpoint_io.py", "strategies/checkpoint_directories.py", "trainer/cli/config_file.py",
               "trainer/cli/selftest.py"}
    pattern = re.compile(r"os\.replace\(|os\.rename\(|tempfile\.mk(d|s)temp\(|shutil\.move\(")
    offenders = []
    for folder in ("trainer", "callbacks", "strategies"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel in allowed:
                continue
            offenders += [f"{rel}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
                          if pattern.search(line)]
    assert not offenders, "\n".join(offenders)


def test_an_accelerator_state_cannot_resume_a_fit_and_says_what_to_do(tmp_path, make_trainer):
    accelerator, (model,), (opt,) = _prepared()
    _train(accelerator, [model], [opt])
    accelerator.save_state(str(tmp_path / "state"))
    with pytest.raises(ValueError, match=r"not a Trainer checkpoint: it holds an Accelerator.save_state file.*no loop "
                                         r"state.*accelerator.load_state\("):
        make_trainer(max_steps=1).fit(BoringModel(), regression_loader(16, 8),
                                      ckpt_path=str(tmp_path / "state" / "state.ckpt"))


def test_a_malformed_accelerator_state_names_its_field(tmp_path):
    from trainer.strategies.checkpoint_io import atomic_save

    accelerator, (model,), (opt,) = _prepared()
    accelerator.save_state(str(tmp_path / "state"))
    state = safe_load(str(tmp_path / "state" / "state.ckpt"))
    state["accelerator"]["step"] = -1
    atomic_save(state, str(tmp_path / "state" / "state.ckpt"))
    with pytest.raises(ValueError, match=r"field 'accelerator.step' holds int -1; expected a whole number >= 0"):
        accelerator.load_state(str(tmp_path / "state"))


def _fsdp_state_worker(directory):
    import torch.distributed as dist

    from trainer import FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin())
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = accelerator.prepare(model, opt)
    g = torch.Generator().manual_seed(1 + dist.get_rank())
    batches = [(torch.randn(4, 4, generator=g), torch.randn(4, 1, generator=g)) for _ in range(3)]

    def step(x, y):
        accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
        opt.step()
        opt.zero_grad()

    full = lambda: {k: v.tolist() for k, v in accelerator.get_state_dict(model).items()}  # noqa: E731
    step(*batches[0])
    step(*batches[1])
    accelerator.save_state(directory)
    saved = full()
    step(*batches[2])
    stepped = full()
    accelerator.load_state(directory)
    loaded = full()
    step(*batches[2])  # the same step again: equal only if the momentum came back too
    return {"saved": saved, "loaded": loaded, "stepped": stepped, "again": full()}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sharded_save_state_round_trips_and_merges(tmp_path):
    from tests.helpers.distributed import run_distributed
    from trainer.cli.merge_weights import full_weights

    directory = str(tmp_path / "state")
    rank0, _ = run_distributed(_fsdp_state_worker, timeout=240, directory=directory)
    assert rank0["loaded"] == rank0["saved"] != rank0["stepped"] and rank0["again"] == rank0["stepped"]
    meta = safe_load(directory)  # the directory's meta.ckpt: the Trainer's sharded layout plus the accelerator entry
    assert meta["format_version"] == 2 and meta["sharded"] == "fsdp-dcp" and meta["optimizer_states"] == "sharded"
    assert meta["accelerator"]["num_models"] == 1 and meta["accelerator"]["num_optimizers"] == 1
    merged = full_weights(directory)
    assert {k: v.tolist() for k, v in merged.items()} == rank0["saved"]
