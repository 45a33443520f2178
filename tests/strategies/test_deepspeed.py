"""DeepSpeed ZeRO 2 and 3 on a real 2-process gloo group (DeepSpeed's CPU accelerator): the same
weights as one process on the same global batch (fp32, SGD), with and without accumulation; bf16
lands close; each rank holds part of the state; sharded resume is exact; merge-weights exports."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer import Trainer, TrainModule
from tests.helpers.distributed import run_distributed, trainer_order

deepspeed = pytest.importorskip("deepspeed")
pytestmark = pytest.mark.timeout(400)


class Net(TrainModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16))
        self.head = torch.nn.Linear(16, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.head(self.body(x)).float(), y.float())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.02, momentum=0.9)


def _data(n=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g)


def _fit(strategy, batch, k, precision="32-true", epochs=2, trainer_order_on_one=False, **kwargs):
    """``trainer_order_on_one``: one process reads the training data in the order the Trainer deals it
    (shuffled) over several, so each of its steps takes the samples of the processes' step."""
    x, y = _data()
    model = Net()
    trainer = Trainer(max_epochs=epochs, strategy=strategy, precision=precision, accumulate_grad_batches=k,
                      logger=False, enable_progress_bar=False, num_sanity_val_steps=0, accelerator="cpu", **kwargs)
    train = TensorDataset(x, y)
    trainer.fit(model, DataLoader(train, batch_size=batch, sampler=trainer_order(train) if trainer_order_on_one else None))
    return model, trainer


def _worker(runs, extensions=None):
    """One process group, one fit per (stage, k, precision) in ``runs``, each with a new engine."""
    from trainer.strategies import DeepSpeedStrategy

    if extensions:  # an empty JIT build root: what DeepSpeed compiles during the fits lands here
        os.environ["TORCH_EXTENSIONS_DIR"] = extensions
    results = []
    for stage, k, precision in runs:
        strategy = DeepSpeedStrategy(zero_stage=stage)
        model, trainer = _fit(strategy, batch=2, k=k, precision=precision, enable_checkpointing=False)
        strategy = trainer.strategy  # with precision= the Trainer trains on a copy of the object (checked)
        full = strategy.full_state_dict(model)
        total = sum(p.numel() * 4 for p in Net().parameters())
        results.append({"weights": {n: v.tolist() for n, v in full.items()}, "steps": trainer.global_step,
                        "local": strategy.local_state_bytes(model, trainer.optimizer), "total": total})
    return {"runs": results, "shm_op": deepspeed.comm.comm.cdb.shm_comm_op is not None}


def test_zero_on_two_processes_matches_one_process_on_the_global_batch_and_bf16_lands_close(tmp_path):
    # One 2-process run trains the cases in turn (starting a DeepSpeed process group costs more than these fits).
    runs = [(2, 1, "32-true"), (2, 2, "32-true"), (3, 2, "32-true"), (2, 1, "bf16-mixed")]
    extensions = tmp_path / "torch_extensions"
    ranks = run_distributed(_worker, timeout=300, runs=runs, extensions=str(extensions))
    # Training never builds DeepSpeed's CPU shared-memory op (inference-only, ~1 CPU-minute to compile).
    assert not any(rank["shm_op"] for rank in ranks)
    assert not extensions.exists() or not any(extensions.iterdir()), sorted(extensions.iterdir())
    for i, (stage, k, precision) in enumerate(runs):
        got = [rank["runs"][i] for rank in ranks]
        model, trainer = _fit("auto", batch=4, k=k, enable_checkpointing=False, trainer_order_on_one=True)  # fp32, 1 proc
        if precision == "bf16-mixed":
            for name, value in model.state_dict().items():
                assert torch.tensor(got[0]["weights"][name]) == pytest.approx(value, abs=5e-2), (precision, name)
            continue
        assert got[0]["steps"] == got[1]["steps"] == trainer.global_step, (stage, k)
        for name, value in model.state_dict().items():
            for rank in got:
                assert torch.tensor(rank["weights"][name]) == pytest.approx(value, abs=1e-5), (stage, k, name)
        for rank in got:  # optimizer state (momentum) is partitioned; under ZeRO-3 the parameters too
            params = rank["total"]
            held = rank["local"]
            expected = params / 2 + params / 2 if stage == 3 else params + params / 2
            assert held == pytest.approx(expected, rel=0.2), (stage, held, expected)


def test_bad_settings_are_refused_before_training():
    from trainer.strategies import DeepSpeedStrategy

    with pytest.raises(ValueError, match=r"zero_stage=4.*expected 0, 1, 2 or 3"):
        DeepSpeedStrategy(zero_stage=4)
    with pytest.raises(ValueError, match=r"offload_parameters=True, zero_stage=2.*stage 3"):
        DeepSpeedStrategy(zero_stage=2, offload_parameters=True)
    with pytest.raises(ValueError, match=r"precision='bf16-true'.*expected '32-true', 'bf16-mixed' or '16-mixed'"):
        DeepSpeedStrategy(precision="bf16-true")


def test_the_trainers_settings_are_written_into_the_config_and_disagreements_reported():
    from trainer.strategies import DeepSpeedStrategy

    strategy = DeepSpeedStrategy(zero_stage=3, offload_optimizer=True, precision="bf16-mixed",
                                 config={"gradient_clipping": 1.0, "fp16": {"enabled": True},
                                         "zero_optimization": {"stage": 1, "overlap_comm": False}})
    strategy.connect(gradient_clip_val=0.5, accumulate_grad_batches=4)
    with pytest.warns(UserWarning) as caught:
        config = strategy.ds_config()
    messages = " ".join(str(w.message) for w in caught)
    assert "gradient_clipping=1.0 disagrees" in messages and "zero_optimization.stage=1 disagrees" in messages
    assert "fp16.enabled=True disagrees with the Trainer's precision 'bf16-mixed'" in messages
    assert config["gradient_clipping"] == 0.5 and config["bf16"] == {"enabled": True}
    assert config["fp16"] == {"enabled": False} and config["managed_gradient_accumulation"] is False
    assert config["zero_optimization"] == {"stage": 3, "overlap_comm": False,
                                           "offload_optimizer": {"device": "cpu", "pin_memory": False}}
    assert config["zero_force_ds_cpu_optimizer"] is False  # the user's optimizer is kept under offload
    unclipped = DeepSpeedStrategy()
    unclipped.connect()
    assert unclipped.ds_config()["gradient_clipping"] == 0.0  # never DeepSpeed's silent 1.0


def test_a_json_config_file_is_read_and_merged(tmp_path):
    import json

    from trainer.strategies import DeepSpeedStrategy

    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"},
                                                      "reduce_bucket_size": 12345},
                                "steps_per_print": 7, "zero_force_ds_cpu_optimizer": True}))
    strategy = DeepSpeedStrategy(zero_stage=2, config=str(path))
    strategy.connect(gradient_clip_val=2.0)
    config = strategy.ds_config()
    assert config["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"},
                                           "reduce_bucket_size": 12345}
    assert config["steps_per_print"] == 7 and config["gradient_clipping"] == 2.0
    assert config["zero_force_ds_cpu_optimizer"] is True  # said in the file: the user's word is kept
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"config='.*ds_config.json'\): cannot read it as JSON"):
        DeepSpeedStrategy(config=str(path))
    with pytest.raises(ValueError, match=r"cannot read it as JSON"):
        DeepSpeedStrategy(config=str(tmp_path / "missing.json"))


def _offload_worker(alias):
    import warnings

    from trainer.strategies import resolve_strategy

    strategy = resolve_strategy(alias)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, trainer = _fit(strategy, batch=2, k=1, enable_checkpointing=False)
    return {"weights": {n: v.tolist() for n, v in strategy.full_state_dict(model).items()},
            "warnings": [str(w.message) for w in caught]}


@pytest.mark.parametrize("alias", ["deepspeed_stage_2_offload", "deepspeed_stage_3_offload"])
def test_offload_trains_with_the_users_optimizer_to_the_same_weights(alias):
    ranks = run_distributed(_offload_worker, timeout=300, alias=alias)
    model, _ = _fit("auto", batch=4, k=1, enable_checkpointing=False, trainer_order_on_one=True)
    for name, value in model.state_dict().items():
        for rank in ranks:
            assert torch.tensor(rank["weights"][name]) == pytest.approx(value, abs=1e-5), (alias, name)
    notices = [m for m in ranks[0]["warnings"] if "optimizer offload with torch.optim.sgd.SGD" in m]
    assert len(notices) == 1 and "DeepSpeedCPUAdam" in notices[0]
    assert not any("optimizer offload" in m for m in ranks[1]["warnings"])  # said once, on rank zero


def test_aliases_build_the_stage_they_name():
    from trainer.strategies import resolve_strategy

    assert resolve_strategy("deepspeed").zero_stage == 2
    three = resolve_strategy("deepspeed_stage_3_offload")
    assert (three.zero_stage, three.offload_optimizer, three.offload_parameters) == (3, True, True)


def _resume_worker(tmp, stage):
    from trainer.callbacks import ModelCheckpoint
    from trainer.strategies import DeepSpeedStrategy

    def fit(epochs, ckpt_path=None, dirpath=f"{tmp}/a"):
        x, y = _data()
        model = Net()
        strategy = DeepSpeedStrategy(zero_stage=stage)
        trainer = Trainer(max_epochs=epochs, strategy=strategy, logger=False, enable_progress_bar=False,
                          num_sanity_val_steps=0, accelerator="cpu",
                          callbacks=[ModelCheckpoint(dirpath=dirpath, save_last=True)])
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=2, shuffle=True), ckpt_path=ckpt_path)
        return {k: v.tolist() for k, v in strategy.full_state_dict(model).items()}

    fit(1)
    resumed = fit(3, ckpt_path="last")
    straight = fit(3, dirpath=f"{tmp}/b")
    return {"resumed": resumed, "straight": straight}


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_from_a_zero_checkpoint_is_exact_and_merge_weights_exports_it(tmp_path, stage):
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    ranks = run_distributed(_resume_worker, timeout=300, tmp=str(tmp_path), stage=stage)
    assert ranks[0]["resumed"] == ranks[0]["straight"]  # bit-exact
    last = tmp_path / "b" / "last.ckpt"
    assert last.is_dir() and (last / "meta.ckpt").is_file() and (last / "engine").is_dir()
    out = tmp_path / "plain"
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "merge-weights", str(last), str(out)],
                            capture_output=True, text=True, timeout=200, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    plain = torch.nn.Module()  # no trainer involved
    plain.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16))
    plain.head = torch.nn.Linear(16, 1)
    plain.load_state_dict(load_file(str(out / "model.safetensors")))
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(value, torch.tensor(ranks[0]["straight"][name]), rtol=0, atol=0)


def _accelerator_worker(stage):
    from trainer import Accelerator, DeepSpeedPlugin

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2,
                              deepspeed_plugin=DeepSpeedPlugin(zero_stage=stage, gradient_accumulation_steps=2))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    for xb, yb in loader:
        with accelerator.accumulate(model):
            accelerator.backward(torch.nn.functional.mse_loss(model(xb), yb))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    return {"strategy": repr(accelerator.strategy),
            "weights": {k: v.tolist() for k, v in accelerator.get_state_dict(model).items()}}


@pytest.mark.parametrize("stage", [2, 3])
def test_accelerator_with_the_deepspeed_plugin_matches_one_process(stage):
    ranks = run_distributed(_accelerator_worker, timeout=300, stage=stage)
    assert ranks[0]["strategy"].startswith(f"DeepSpeedStrategy(ZeRO-{stage}, gloo, rank 0/2")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    x, y = _data()
    for start in range(0, 32, 8):  # 2 ranks x 2 micro-batches x 2 samples per optimizer step
        torch.nn.functional.mse_loss(model(x[start:start + 8]), y[start:start + 8]).backward()
        optimizer.step()
        for _ in range(2):  # a prepared scheduler steps once per process, as under Accelerate
            scheduler.step()
        optimizer.zero_grad()
    for name, value in model.state_dict().items():
        assert torch.tensor(ranks[0]["weights"][name]) == pytest.approx(value, abs=1e-5), name
