"""FSDP2 on a real 2-process gloo group: the same weights as one process on the same global batch
(fp32, SGD), with and without accumulation; bf16 lands close to fp32; each rank holds half of the
parameter and optimizer state; the full state dict is gathered on request; bad settings are refused."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer.callbacks import Callback
from trainer.strategies import FSDPStrategy
from trainer import Trainer, TrainModule
from tests.helpers.distributed import run_distributed, trainer_order

pytestmark = pytest.mark.timeout(300)


class Block(torch.nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x):
        return torch.tanh(self.linear(x))


class Net(TrainModule):
    def __init__(self, width: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.Sequential(Block(width), Block(width))
        self.head = torch.nn.Linear(width, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.head(self.blocks(x)).float(), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.head(self.blocks(x)).float(), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _data(n=32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g)


def _fit(strategy, batch, k, precision="32-true", epochs=2, trainer_order_on_one=False):
    """``trainer_order_on_one``: one process reads the training data in the order the Trainer deals it
    (shuffled) over several, so each of its steps takes the samples of the processes' step."""
    x, y = _data()
    model = Net()
    trainer = Trainer(max_epochs=epochs, strategy=strategy, precision=precision, accumulate_grad_batches=k,
                      logger=False, enable_progress_bar=False, enable_checkpointing=False, num_sanity_val_steps=0,
                      accelerator="cpu")
    train = TensorDataset(x, y)
    trainer.fit(model, DataLoader(train, batch_size=batch, sampler=trainer_order(train) if trainer_order_on_one else None),
                DataLoader(TensorDataset(x, y), batch_size=4))
    return model, trainer


def _fsdp_worker(runs):
    """One process group, one fit per (k, precision) in ``runs`` (a fresh FSDP strategy each)."""
    results = []
    for k, precision in runs:
        strategy = FSDPStrategy(auto_wrap_policy={Block}, precision=precision)
        model, trainer = _fit(strategy, batch=2, k=k, precision=precision)
        full = strategy.full_state_dict(model)
        per_rank = strategy.local_state_bytes(model, trainer.optimizer)
        total = sum(p.numel() * 4 for p in Net().parameters()) * 2  # fp32 params + one momentum buffer each
        results.append({"weights": {k: v.tolist() for k, v in full.items()}, "local_bytes": per_rank,
                        "full_bytes": total, "steps": trainer.global_step, "val": float(trainer.callback_metrics["val/loss"])})
    return results


def test_fsdp_on_two_processes_matches_one_process_on_the_global_batch_and_bf16_lands_close():
    # One 2-process run trains the three cases in turn (a process group costs more than these fits).
    runs = [(1, "32-true"), (2, "32-true"), (1, "bf16-mixed")]
    ranks = run_distributed(_fsdp_worker, runs=runs)
    for i, (k, precision) in enumerate(runs):
        model, trainer = _fit("auto", batch=4, k=k, trainer_order_on_one=True)  # one process, batch 2 x 2 ranks, fp32
        reference = model.state_dict()
        got = [rank[i] for rank in ranks]
        if precision == "bf16-mixed":
            for name, value in reference.items():
                weights = torch.tensor(got[0]["weights"][name])
                assert weights.dtype == torch.float32  # sharded master weights stay fp32
                assert weights == pytest.approx(value, abs=3e-2), (precision, name)
            continue
        assert got[0]["steps"] == trainer.global_step, k
        assert set(got[0]["weights"]) == set(reference)
        for name, value in reference.items():
            assert torch.tensor(got[0]["weights"][name]) == pytest.approx(value, abs=1e-5), (k, name)
        assert got[0]["val"] == got[1]["val"] == pytest.approx(float(trainer.callback_metrics["val/loss"]), rel=1e-5), k
        # each rank holds half of the parameters and of the optimizer state
        for rank in got:
            assert rank["local_bytes"] == pytest.approx(rank["full_bytes"] / 2, rel=0.15), k


def test_fsdp_refuses_settings_that_cannot_work():
    with pytest.raises(ValueError, match=r"precision='16-mixed'.*Use precision='bf16-mixed'"):
        FSDPStrategy(precision="16-mixed")
    with pytest.raises(ValueError, match=r"sharding='ring'.*expected 'full' or 'hybrid'"):
        FSDPStrategy(sharding="ring")
    with pytest.raises(ValueError, match=r"auto_wrap_policy=-3"):
        FSDPStrategy(auto_wrap_policy=-3)


def _no_params_worker():
    class Empty(TrainModule):
        def training_step(self, batch, batch_idx):
            return batch[0].sum()

    try:
        FSDPStrategy().setup_module(Empty())
    except ValueError as err:
        return str(err)
    return "no error"


def test_fsdp_with_a_module_without_parameters_names_the_fix():
    ranks = run_distributed(_no_params_worker)
    assert "has no trainable parameters to shard" in ranks[0] and "strategy='ddp'" in ranks[0]


def test_min_params_policy_picks_the_innermost_big_blocks():
    net = Net()  # each Block's Linear has 72 parameters, the Sequential of both 144
    assert FSDPStrategy(auto_wrap_policy=70)._wrap_targets(net) == [net.blocks[0].linear, net.blocks[1].linear]
    assert FSDPStrategy(auto_wrap_policy=80)._wrap_targets(net) == [net.blocks]
    assert FSDPStrategy(auto_wrap_policy={Block})._wrap_targets(net) == [net.blocks[0], net.blocks[1]]


def _resume_worker(tmp, world):
    from trainer.callbacks import ModelCheckpoint

    def fit(epochs, ckpt_path=None, dirpath=f"{tmp}/a"):
        x, y = _data()
        model = Net()
        trainer = Trainer(max_epochs=epochs, strategy=FSDPStrategy(auto_wrap_policy={Block}), logger=False,
                          enable_progress_bar=False, num_sanity_val_steps=0, accelerator="cpu",
                          callbacks=[ModelCheckpoint(dirpath=dirpath, save_last=True)])
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4 // world, shuffle=True), ckpt_path=ckpt_path)
        return trainer.strategy.full_state_dict(model), trainer

    fit(2)                                    # writes last.ckpt (a directory of shards) after epoch 2
    resumed, trainer = fit(4, ckpt_path="last")
    straight, _ = fit(4, dirpath=f"{tmp}/b")
    return {"resumed": {k: v.tolist() for k, v in resumed.items()},
            "straight": {k: v.tolist() for k, v in straight.items()}, "steps": trainer.global_step}


def test_resume_from_a_sharded_checkpoint_is_exact(tmp_path):
    import os

    ranks = run_distributed(_resume_worker, tmp=str(tmp_path), world=2)
    assert ranks[0]["resumed"] == ranks[0]["straight"]  # bit-exact
    last = tmp_path / "a" / "last.ckpt"
    assert last.is_dir() and (last / "meta.ckpt").is_file() and (last / ".metadata").is_file()
    assert sorted(n for n in os.listdir(last) if n.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"]


def _save_two_ranks(tmp):
    from trainer.callbacks import ModelCheckpoint

    x, y = _data()
    model = Net()
    trainer = Trainer(max_epochs=1, strategy=FSDPStrategy(), logger=False, enable_progress_bar=False,
                      accelerator="cpu", callbacks=[ModelCheckpoint(dirpath=f"{tmp}/ckpts", save_last=True)])
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=2))  # last.ckpt: ModelCheckpoint's epoch-end save
    trainer.save_checkpoint(f"{tmp}/two.ckpt")
    mid = Trainer(max_steps=3, strategy=FSDPStrategy(), logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, accelerator="cpu")
    mid.fit(Net(), DataLoader(TensorDataset(x, y), batch_size=2))
    mid.save_checkpoint(f"{tmp}/mid.ckpt")  # inside epoch 0 (batch_idx 3)
    return {k: v.tolist() for k, v in trainer.strategy.full_state_dict(model).items()}


def _load_one_rank(tmp):
    x, y = _data()
    model = Net()
    trainer = Trainer(max_epochs=2, strategy=FSDPStrategy(), logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, accelerator="cpu")
    loaded = {}

    class Grab(Callback):
        def on_train_start(self, trainer, module):
            loaded.update({k: v.tolist() for k, v in trainer.strategy.full_state_dict(module).items()})

    trainer.callbacks.append(Grab())
    # batch 2 on one rank: 16 batches an epoch where the two ranks had 8 each (the saved batch_idx)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=2), ckpt_path=f"{tmp}/ckpts/last.ckpt")
    return {"loaded": loaded, "steps": trainer.global_step}


def test_a_checkpoint_saved_on_two_ranks_resumes_on_one_and_merges_into_plain_weights(tmp_path):
    import subprocess
    import sys

    from safetensors.torch import load_file

    saved = run_distributed(_save_two_ranks, tmp=str(tmp_path))[0]
    resumed = run_distributed(_load_one_rank, world_size=1, tmp=str(tmp_path))[0]
    assert resumed["loaded"] == saved
    assert resumed["steps"] == 8 + 16  # epoch 0 was over: epoch 1 trained whole, nothing of epoch 0 again
    # a sharded checkpoint under another strategy (here one process, no FSDP): the strategy is named
    # (with the merge-weights fix), not the world size, although it was also saved mid-epoch on 2 ranks
    x, y = _data()
    trainer = Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      accelerator="cpu")
    with pytest.raises(ValueError, match=r"written by FSDPStrategy \(sharded: fsdp-dcp\), but this run uses "
                                         r"SingleDeviceStrategy.*trainer merge-weights") as caught:
        trainer.fit(Net(), DataLoader(TensorDataset(x, y), batch_size=2), ckpt_path=str(tmp_path / "mid.ckpt"))
    assert "process(es)" not in str(caught.value)

    # merge-weights (`trainer merge-weights`) turns the same sharded checkpoint into plain weights
    out = tmp_path / "plain"
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "merge-weights", str(tmp_path / "two.ckpt"),
                             str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    weights = load_file(str(out / "model.safetensors"))
    plain = torch.nn.Module()  # a plain module of the same shape, no trainer involved
    plain.blocks = torch.nn.Sequential(Block(8), Block(8))
    plain.head = torch.nn.Linear(8, 1)
    plain.load_state_dict(weights)
    assert {k: v.tolist() for k, v in plain.state_dict().items()} == saved


def test_merge_weights_of_a_missing_or_partial_checkpoint_fails_with_the_reason(tmp_path):
    import subprocess
    import sys

    (tmp_path / "partial.ckpt").mkdir()  # a sharded directory whose writing never finished
    result = subprocess.run([sys.executable, "-m", "trainer.cli", "merge-weights", str(tmp_path / "partial.ckpt"),
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "without meta.ckpt" in result.stderr


def _accelerator_worker(plugin_kwargs):
    from trainer import Accelerator, FullyShardedDataParallelPlugin

    accelerator = Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin(**plugin_kwargs),
                              gradient_accumulation_steps=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(Block(8), Block(8), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built before prepare, as the seed's script does
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for xb, yb in loader:
        with accelerator.accumulate(model):
            accelerator.backward(torch.nn.functional.mse_loss(model(xb), yb))
            optimizer.step()
            optimizer.zero_grad()
    return {"strategy": repr(accelerator.strategy),
            "weights": {k: v.tolist() for k, v in accelerator.get_state_dict(model).items()}}


def test_accelerator_with_the_fsdp_plugin_matches_one_process():
    ranks = run_distributed(_accelerator_worker, plugin_kwargs={"auto_wrap_policy": "transformer",
                                                               "transformer_cls_names_to_wrap": ["Block"]})
    assert ranks[0]["strategy"].startswith("FSDPStrategy(gloo, rank 0/2")
    torch.manual_seed(0)
    model = torch.nn.Sequential(Block(8), Block(8), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    for start in range(0, 32, 8):  # 2 ranks x 2 micro-batches x 2 samples per optimizer step
        torch.nn.functional.mse_loss(model(x[start:start + 8]), y[start:start + 8]).backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, value in model.state_dict().items():
        assert torch.tensor(ranks[0]["weights"][name]) == pytest.approx(value, abs=1e-5), name


def test_plugins_refuse_settings_that_cannot_work():
    from trainer import Accelerator, DeepSpeedPlugin, FullyShardedDataParallelPlugin

    with pytest.raises(ValueError, match=r"auto_wrap_policy='transformer'\) needs transformer_cls_names_to_wrap"):
        FullyShardedDataParallelPlugin(auto_wrap_policy="transformer")
    with pytest.raises(ValueError, match=r"NO_SHARD.*that is DDP"):
        FSDPStrategy.from_options({"sharding_strategy": "NO_SHARD"})
    with pytest.raises(ValueError, match=r"zero_stage=4.*expected 0, 1, 2 or 3"):
        DeepSpeedPlugin(zero_stage=4)
    with pytest.raises(ValueError, match=r"offload_param_device='cpu', zero_stage=2.*ZeRO stage 3"):
        DeepSpeedPlugin(zero_stage=2, offload_param_device="cpu")
    with pytest.raises(ValueError, match=r"pick one sharded strategy"):
        Accelerator(cpu=True, deepspeed_plugin=DeepSpeedPlugin(), fsdp_plugin=FullyShardedDataParallelPlugin())


class Huge(TrainModule):
    """Layers built in configure_model: on the meta device under FSDP, materialised sharded."""

    def __init__(self):
        super().__init__()
        self.blocks = None
        self.meta_at_build = None

    def configure_model(self):
        if self.blocks is not None:
            return
        self.blocks = torch.nn.Sequential(Block(8), Block(8), torch.nn.Linear(8, 1))
        self.meta_at_build = self.blocks[0].linear.weight.is_meta

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.blocks(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _meta_worker():
    strategy = FSDPStrategy(auto_wrap_policy={Block})
    x, y = _data()
    model = Huge()
    trainer = Trainer(max_epochs=1, strategy=strategy, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, accelerator="cpu")
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    full = strategy.full_state_dict(model)
    return {"meta_at_build": model.meta_at_build, "local": strategy.local_state_bytes(model),
            "total": sum(v.numel() * 4 for v in full.values()) if full else None,
            "any_meta": any(p.is_meta for p in model.parameters()),
            "loss": float(trainer.callback_metrics["train/loss"]) if "train/loss" in trainer.callback_metrics else None,
            "finite": all(bool(torch.isfinite(v).all()) for v in full.values())}


def test_configure_model_builds_on_meta_and_materialises_sharded():
    ranks = run_distributed(_meta_worker)
    for rank in ranks:
        assert rank["meta_at_build"] is True and rank["any_meta"] is False
    assert ranks[0]["finite"] and ranks[0]["local"] == pytest.approx(ranks[0]["total"] / 2, rel=0.15)


def test_configure_model_without_fsdp_builds_real_layers():
    x, y = _data()
    model = Huge()
    Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
            accelerator="cpu").fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    assert model.meta_at_build is False


def _options_worker(kinds):
    options = {"offload": dict(cpu_offload=True), "checkpointing": dict(activation_checkpointing={Block}),
               "hybrid": dict(sharding="hybrid"), "grad_op": dict(reshard_after_forward=False)}
    results = {}
    for kind in kinds:  # one process group, one fit per option
        strategy = FSDPStrategy(auto_wrap_policy={Block}, **options[kind])
        model, trainer = _fit(strategy, batch=2, k=1)
        results[kind] = {k: v.tolist() for k, v in strategy.full_state_dict(model).items()}
    return results


def test_fsdp_options_train_to_the_same_weights():
    kinds = ["offload", "checkpointing", "hybrid", "grad_op"]
    ranks = run_distributed(_options_worker, kinds=kinds)
    model, _ = _fit("auto", batch=4, k=1, trainer_order_on_one=True)
    for kind in kinds:
        for name, value in model.state_dict().items():
            assert torch.tensor(ranks[0][kind][name]) == pytest.approx(value, abs=1e-5), (kind, name)
