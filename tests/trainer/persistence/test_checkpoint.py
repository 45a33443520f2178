"""Checkpoint content, ModelCheckpoint's options, plain safetensors weights, the Accelerator's
save_state/load_state, and the errors a user meets when a checkpoint does not fit."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import types

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer.callbacks import Callback, ModelCheckpoint, MissingMetricError
from trainer.strategies.checkpoint_io import CheckpointError, atomic_save, safe_load
from trainer import Accelerator, Trainer, TrainModule, seed_everything
from tests.helpers import BoringModel, regression_loader
from tests.helpers.trainers import quiet_trainer


def test_checkpoint_holds_the_whole_training_state(tmp_path, make_trainer):
    class Extras(BoringModel):
        def __init__(self, width: int = 3):
            super().__init__()
            self.save_hyperparameters()

        def on_save_checkpoint(self, checkpoint):
            checkpoint["my_extra"] = {"answer": 42}

    trainer = make_trainer(default_root_dir=str(tmp_path), max_epochs=2,
                           precision="16-mixed", enable_checkpointing=False)
    trainer.fit(Extras(), regression_loader(), regression_loader())
    path = tmp_path / "full.ckpt"
    trainer.save_checkpoint(str(path))
    ckpt = safe_load(str(path))
    assert ckpt["format_version"] == 2 and ckpt["my_extra"] == {"answer": 42}
    meta = ckpt["metadata"]
    assert meta["world_size"] == 1 and meta["strategy"] == "SingleDeviceStrategy" and meta["precision"] == "16-mixed"
    assert meta["config"]["max_epochs"] == 2 and meta["torch_version"] == str(torch.__version__)
    assert ckpt["hparams"] == {"width": 3}
    assert set(ckpt["state_dict"]) == {"layer.weight", "layer.bias"}
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 0.1
    assert ckpt["precision"]["scaler"]["scale"] == trainer.strategy.precision.scaler.get_scale()
    loops = ckpt["loops"]
    assert (loops["global_step"], loops["current_epoch"], loops["batch_idx"]) == (16, 2, 0)
    assert set(ckpt["rng"][0]) >= {"python", "numpy", "torch"}
    assert "val/loss" in loops["callback_metrics"]


def test_gradient_scaler_state_is_restored(tmp_path, make_trainer):
    trainer = make_trainer(default_root_dir=str(tmp_path), max_epochs=1,
                           precision="16-mixed", enable_checkpointing=False)
    trainer.fit(BoringModel(), regression_loader())
    trainer.strategy.precision.scaler.update(1234.0)
    trainer.save_checkpoint(str(tmp_path / "s.ckpt"))
    resumed = make_trainer(default_root_dir=str(tmp_path), precision="16-mixed", max_epochs=1,
                           enable_checkpointing=False)
    resumed.fit(BoringModel(), regression_loader(), ckpt_path=str(tmp_path / "s.ckpt"))
    assert resumed.strategy.precision.scaler.get_scale() == 1234.0


# -- ModelCheckpoint ----------------------------------------------------------------------------------

class Scored(BoringModel):
    """val/score follows a fixed sequence, one value per epoch."""

    SCORES = [5.0, 3.0, 4.0, 1.0, 2.0]

    def validation_step(self, batch, batch_idx):
        self.log("val/score", self.SCORES[self.current_epoch])


@pytest.mark.parametrize("k, mode, kept", [(2, "min", [1.0, 2.0]), (2, "max", [5.0, 4.0]), (1, "min", [1.0]),
                                            (-1, "min", [1.0, 2.0, 3.0, 4.0, 5.0])])
def test_save_top_k_keeps_the_best_files_and_names_them_from_the_template(tmp_path, k, mode, kept, make_trainer):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "c"), monitor="val/score", mode=mode, save_top_k=k,
                           filename="epoch={epoch}-step={step}-{val/score:.1f}")
    make_trainer(default_root_dir=str(tmp_path), max_epochs=5, callbacks=[ckpt], num_sanity_val_steps=0).fit(
        Scored(), regression_loader(16, 8), regression_loader(8, 8))
    files = sorted(os.listdir(tmp_path / "c"))
    expected = sorted(f"epoch={Scored.SCORES.index(s)}-step={2 * (Scored.SCORES.index(s) + 1)}-val_score={s:.1f}.ckpt"
                      for s in kept)
    assert files == expected
    assert ckpt.best_model_score == kept[0]  # kept lists the best first
    assert os.path.basename(ckpt.best_model_path).endswith(f"val_score={kept[0]:.1f}.ckpt")
    assert sorted(ckpt.best_k_models.values()) == sorted(kept)


def test_save_top_k_zero_with_save_last_writes_only_last(tmp_path, make_trainer):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "c"), save_top_k=0, save_last=True)
    make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[ckpt]).fit(BoringModel(), regression_loader())
    assert os.listdir(tmp_path / "c") == ["last.ckpt"]
    assert safe_load(str(tmp_path / "c" / "last.ckpt"))["loops"]["current_epoch"] == 1  # saved in epoch 1's end


def test_last_is_a_second_name_of_the_checkpoint_just_written_and_outlives_its_eviction(tmp_path, make_trainer):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "c"), monitor="val/score", save_top_k=1, save_last=True,
                           filename="{epoch}")
    seen = []

    class Watch(Callback):
        def on_validation_end(self, trainer, module):  # runs after ModelCheckpoint's save
            last = os.path.join(ckpt.dirpath, "last.ckpt")
            seen.append(os.path.samefile(last, os.path.join(ckpt.dirpath, f"epoch={trainer.current_epoch}.ckpt"))
                        if os.path.exists(os.path.join(ckpt.dirpath, f"epoch={trainer.current_epoch}.ckpt"))
                        else os.stat(last).st_nlink)

    make_trainer(default_root_dir=str(tmp_path), max_epochs=3, callbacks=[ckpt, Watch()], num_sanity_val_steps=0).fit(
        Scored(), regression_loader(16, 8), regression_loader(8, 8))
    # epoch 0 (5.0) is saved and linked; epoch 1 (3.0) replaces it; epoch 2 (4.0) is not among the best 1, so
    # last.ckpt is written in full
    assert seen == [True, True, 1]
    assert sorted(os.listdir(tmp_path / "c")) == ["epoch=1.ckpt", "last.ckpt"]
    last = safe_load(str(tmp_path / "c" / "last.ckpt"))
    assert last["loops"]["current_epoch"] == 2
    best = safe_load(str(tmp_path / "c" / "epoch=1.ckpt"))
    assert best["callbacks"] != {} and best["loops"]["current_epoch"] == 1
    # epoch 0's file was evicted (its name removed) while last.ckpt still named it: last stayed whole
    assert not os.path.exists(tmp_path / "c" / "epoch=0.ckpt")


def test_last_is_written_in_full_where_links_cannot_be_made(tmp_path, monkeypatch, make_trainer):
    def no_links(src, dst, *args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "c"), save_top_k=1, save_last=True, filename="{epoch}")
    make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[ckpt]).fit(BoringModel(), regression_loader())
    assert sorted(os.listdir(tmp_path / "c")) == ["epoch=1.ckpt", "last.ckpt"]
    assert os.stat(tmp_path / "c" / "last.ckpt").st_nlink == 1
    first, second = (safe_load(str(tmp_path / "c" / n)) for n in ("epoch=1.ckpt", "last.ckpt"))
    assert first["loops"]["global_step"] == second["loops"]["global_step"] == 16
    assert first["callbacks"][ckpt.state_key] == second["callbacks"][ckpt.state_key]  # the same bookkeeping


def _checkpoint_files(directory):
    return {name: safe_load(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}


def _assert_same_content(a, b, where=""):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if key not in ("versions", "saved_at"):
                _assert_same_content(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_content(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), where


def test_async_save_writes_the_same_checkpoints_as_a_synchronous_save(tmp_path, monkeypatch, make_trainer):
    def run(name, async_save):
        seed_everything(3)
        ckpt = ModelCheckpoint(dirpath=str(tmp_path / name), monitor="val/score", save_top_k=2, save_last=True,
                               every_n_epochs=1, filename="{epoch}", async_save=async_save)
        trainer = make_trainer(default_root_dir=str(tmp_path), max_epochs=5, callbacks=[ckpt], num_sanity_val_steps=0)
        trainer.fit(Scored(), regression_loader(16, 8), regression_loader(8, 8))
        return ckpt, trainer

    sync, _ = run("sync", False)
    monkeypatch.setenv("TRAINER_TEST_SAVE_DELAY", "0.05")  # every background write lags behind training
    asyn, trainer = run("async", True)
    assert not trainer.background_writer.pending  # fit returned only after the last write was whole
    files = _checkpoint_files(tmp_path / "sync")
    assert sorted(files) == sorted(os.listdir(tmp_path / "async")) == ["epoch=3.ckpt", "epoch=4.ckpt", "last.ckpt"]
    for name, content in files.items():
        other = safe_load(str(tmp_path / "async" / name))
        # the same state, step and bookkeeping; only the directory names differ
        state_key = asyn.state_key
        content["callbacks"][state_key] = other["callbacks"][state_key] = None
        _assert_same_content(content, other, name)
    assert (asyn.best_model_score, os.path.basename(asyn.best_model_path)) == \
        (sync.best_model_score, os.path.basename(sync.best_model_path))
    assert os.path.samefile(tmp_path / "async" / "last.ckpt", tmp_path / "async" / "epoch=4.ckpt")


def test_async_save_does_not_wait_for_the_disk_and_keeps_saves_in_order(tmp_path, monkeypatch, make_trainer):
    monkeypatch.setenv("TRAINER_TEST_SAVE_DELAY", "1.0")  # each write holds its rename back for a second
    landed = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            # ModelCheckpoint (listed before this callback) has just asked for step=N.ckpt
            landed.append(os.path.exists(os.path.join(ckpt.dirpath, f"step={trainer.global_step}.ckpt")))
            if trainer.global_step == 2:  # a synchronous save while step=2's write (and its link) is pending
                trainer.save_checkpoint(os.path.join(ckpt.dirpath, "last.ckpt"))

    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "c"), every_n_train_steps=1, save_top_k=-1, save_last=True,
                           filename="{step}", async_save=True)
    make_trainer(default_root_dir=str(tmp_path), max_epochs=1, max_steps=2, callbacks=[ckpt, Watch()]).fit(
        BoringModel(), regression_loader())
    assert landed == [False, False]  # training went on while the files were still being written
    assert sorted(os.listdir(tmp_path / "c")) == ["last.ckpt", "step=1.ckpt", "step=2.ckpt"]
    # the synchronous save waited for the background write: its full file replaced the link, not the reverse
    assert os.stat(tmp_path / "c" / "last.ckpt").st_nlink == 1
    assert os.stat(tmp_path / "c" / "step=2.ckpt").st_nlink == 1
    assert safe_load(str(tmp_path / "c" / "last.ckpt"))["loops"]["global_step"] == 2


def test_the_snapshot_a_background_write_takes_is_not_changed_by_training():
    from collections import OrderedDict

    from trainer.strategies.checkpoint_io import snapshot

    weight = torch.ones(3)
    live = {"state_dict": OrderedDict(w=weight), "optimizer": {"state": {0: {"exp_avg": weight * 2}}, "groups": [
        {"lr": 0.1, "params": [0]}]}, "loops": {"global_step": 4}}
    copy = snapshot(live)
    weight.add_(1.0)                                   # an optimizer step after the save was asked for
    live["optimizer"]["state"][0]["exp_avg"].zero_()
    live["optimizer"]["groups"][0]["lr"] = 0.5         # a scheduler step
    live["loops"]["global_step"] = 5
    assert torch.equal(copy["state_dict"]["w"], torch.ones(3)) and type(copy["state_dict"]) is OrderedDict
    assert torch.equal(copy["optimizer"]["state"][0]["exp_avg"], torch.full((3,), 2.0))
    assert copy["optimizer"]["groups"][0]["lr"] == 0.1 and copy["loops"]["global_step"] == 4


def test_a_failed_background_write_is_raised_in_the_training_thread(tmp_path, monkeypatch, make_trainer):
    import trainer.strategies.checkpoint_format as checkpoint_format  # the one-file format's background writer

    def full_disk(obj, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_format, "atomic_save", full_disk)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "c"), every_n_train_steps=2, save_top_k=-1, async_save=True)
    with pytest.raises(RuntimeError, match=r"Writing the checkpoint .*step=2.ckpt in the background failed: "
                                           r"OSError: .*No space left on device.*async_save=False"):
        make_trainer(default_root_dir=str(tmp_path), max_epochs=1, max_steps=6, callbacks=[ckpt]).fit(
            BoringModel(), regression_loader())


def test_a_training_error_waits_for_the_pending_write_and_carries_its_failure(tmp_path, monkeypatch, make_trainer):
    import threading

    import trainer.strategies.checkpoint_format as checkpoint_format  # the one-file format's background writer

    release = threading.Event()

    def slow_full_disk(obj, path):
        release.wait(30)
        raise OSError(28, "No space left on device")

    class Boom(BoringModel):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                release.set()  # the write of step=2 fails while this error unwinds
                raise ValueError("boom at step 3")
            return super().training_step(batch, batch_idx)

    monkeypatch.setattr(checkpoint_format, "atomic_save", slow_full_disk)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "c"), every_n_train_steps=2, save_top_k=-1, async_save=True)
    trainer = make_trainer(default_root_dir=str(tmp_path), max_epochs=1, max_steps=6, callbacks=[ckpt])
    with pytest.raises(ValueError, match="boom at step 3") as caught:
        trainer.fit(Boom(), regression_loader())
    assert not trainer.background_writer.pending
    notes = "\n".join(getattr(caught.value, "__notes__", [])) + str(caught.value)
    assert "step=2.ckpt in the background failed: OSError" in notes


def test_async_save_is_refused_for_deepspeed_checkpoints():
    from trainer.strategies import DeepSpeedStrategy

    ckpt = ModelCheckpoint(async_save=True)
    trainer = types.SimpleNamespace(accelerator=types.SimpleNamespace(strategy=DeepSpeedStrategy()))
    with pytest.raises(ValueError, match=r"async_save=True\) with DeepSpeedStrategy: its checkpoints are sharded.*"
                                         r"FSDP's can.*async_save=False"):
        ckpt.setup(trainer, None, "fit")


def test_every_n_train_steps_and_every_n_epochs(tmp_path, make_trainer):
    steps = ModelCheckpoint(dirpath=str(tmp_path / "s"), every_n_train_steps=3, save_top_k=-1)
    epochs = ModelCheckpoint(dirpath=str(tmp_path / "e"), every_n_epochs=2, save_top_k=-1)
    make_trainer(default_root_dir=str(tmp_path), max_epochs=4, callbacks=[steps, epochs]).fit(
        BoringModel(), regression_loader(32, 8))
    assert sorted(os.listdir(tmp_path / "s")) == sorted(f"epoch={(s - 1) // 4}-step={s}.ckpt"
                                                        for s in (3, 6, 9, 12, 15))
    assert sorted(os.listdir(tmp_path / "e")) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt"]


def test_train_time_interval(tmp_path, monkeypatch, make_trainer):
    import time as time_module
    clock = [0.0]
    monkeypatch.setattr(time_module, "monotonic", lambda: clock[0])

    class Tick(BoringModel):
        def training_step(self, batch, batch_idx):
            clock[0] += 10.0
            return super().training_step(batch, batch_idx)

    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "t"), train_time_interval=datetime.timedelta(seconds=25),
                           save_top_k=-1)
    make_trainer(default_root_dir=str(tmp_path), max_epochs=1, callbacks=[ckpt]).fit(Tick(), regression_loader(64, 8))
    assert sorted(os.listdir(tmp_path / "t")) == ["epoch=0-step=3.ckpt", "epoch=0-step=6.ckpt"]


def test_save_weights_only_cannot_resume(tmp_path, make_trainer):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "w"), save_weights_only=True, save_last=True)
    make_trainer(default_root_dir=str(tmp_path), max_epochs=1, callbacks=[ckpt]).fit(BoringModel(), regression_loader())
    content = safe_load(str(tmp_path / "w" / "last.ckpt"))
    assert "optimizer_states" not in content and set(content["state_dict"]) == {"layer.weight", "layer.bias"}
    with pytest.raises(CheckpointError, match=r"holds weights only \(save_weights_only=True\)"):
        make_trainer(default_root_dir=str(tmp_path), max_epochs=1,
                     callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "w"))]).fit(
            BoringModel(), regression_loader(), ckpt_path="last")


def test_a_monitor_that_was_never_logged_lists_the_logged_keys(tmp_path, make_trainer):
    ckpt = ModelCheckpoint(monitor="val/acc")
    with pytest.raises(MissingMetricError, match=r"monitor='val/acc'\): this metric was never logged\. Logged "
                                                 r"metrics: \['train/loss', 'val/loss'\]"):  # train/loss: current when read
        make_trainer(default_root_dir=str(tmp_path), max_epochs=1, callbacks=[ckpt]).fit(
            BoringModel(), regression_loader(), regression_loader())


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "best"}, r"mode='best'.*'min' or 'max'"),
    ({"save_top_k": -2}, r"save_top_k=-2\): Must be >= -1 .*-1 to keep all"),
    ({"save_top_k": 3}, r"save_top_k=3, monitor=None.*need a metric"),
    ({"every_n_train_steps": 2, "every_n_epochs": 1}, r"every_n_train_steps=\.\.\., every_n_epochs=\.\.\.\): .*every_n_train_steps=2, every_n_epochs=1, .*choose one"),
])
def test_model_checkpoint_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint(**kwargs)


# -- errors on load ------------------------------------------------------------------------------------

def _saved(tmp_path, model=None, **kw) -> str:
    trainer = quiet_trainer(default_root_dir=str(tmp_path), max_epochs=1, enable_checkpointing=False, **kw)
    trainer.fit(model or BoringModel(), regression_loader())
    path = str(tmp_path / "m.ckpt")
    trainer.save_checkpoint(path)
    return path


def test_missing_checkpoint_path(tmp_path, make_trainer):
    with pytest.raises(FileNotFoundError, match=r"Checkpoint '.*nope\.ckpt' does not exist.*ckpt_path='last'"):
        make_trainer(default_root_dir=str(tmp_path), max_epochs=1).fit(
            BoringModel(), regression_loader(), ckpt_path=str(tmp_path / "nope.ckpt"))


class Wider(BoringModel):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.head = torch.nn.Linear(2, 1)

    def forward(self, x):
        return self.head(self.layer(x))


def test_checkpoint_from_a_different_model_lists_every_difference(tmp_path, make_trainer):
    path = _saved(tmp_path)
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): head\.bias, head\.weight; shape mismatches \(2\): "
                                              r"layer\.bias: checkpoint \(1,\) vs model \(2,\), layer\.weight: "
                                              r"checkpoint \(1, 4\) vs model \(2, 4\).*strict_loading = False"):
        make_trainer(default_root_dir=str(tmp_path), max_epochs=2).fit(Wider(), regression_loader(), ckpt_path=path)


def test_strict_loading_false_loads_the_matching_keys(tmp_path, make_trainer):
    class Extra(BoringModel):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(1, 1)

    path = _saved(tmp_path)
    saved = safe_load(path)["state_dict"]
    model = Extra()
    model.strict_loading = False
    trainer = make_trainer(default_root_dir=str(tmp_path), max_epochs=1)
    with pytest.warns(UserWarning, match=r"missing keys \(2\): extra\.bias, extra\.weight.*matching keys only"):
        with pytest.warns(UserWarning, match=r"optimizer state skipped, it does not fit"):
            trainer.fit(model, regression_loader(), ckpt_path=path)
    assert trainer.global_step == 8  # resumed at the end of epoch 0: nothing left to train
    assert torch.equal(model.layer.weight, saved["layer.weight"])


def test_checkpoint_from_a_newer_format_version(tmp_path, make_trainer):
    path = _saved(tmp_path)
    content = safe_load(path)
    content["format_version"] = 99
    atomic_save(content, path)
    with pytest.raises(CheckpointError, match=r"format 99, newer than the 2 this version reads.*Upgrade"):
        make_trainer(default_root_dir=str(tmp_path), max_epochs=1).fit(
            BoringModel(), regression_loader(), ckpt_path=path)


def test_not_a_checkpoint_of_this_library(tmp_path, make_trainer):
    path = tmp_path / "weights.pt"
    torch.save(BoringModel().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"is not a Trainer checkpoint: it holds plain weights"):
        make_trainer(default_root_dir=str(tmp_path), max_epochs=1).fit(
            BoringModel(), regression_loader(), ckpt_path=str(path))


# -- plain weights -----------------------------------------------------------------------------------

from tests.trainer.persistence.test_checkpoint_plain import Tied  # noqa: E402  (the subprocess imports the same)


def test_save_model_shards_and_loads_into_a_plain_module_without_the_library(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    names = Accelerator(cpu=True).save_model(model, str(tmp_path / "w"), max_shard_size="4KB")
    assert len(names) > 2 and names[-1] == "model.safetensors.index.json"
    index = json.loads((tmp_path / "w" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert all(os.path.getsize(tmp_path / "w" / n) < 4000 + 3500 for n in names[:-1])  # one tensor may overflow
    script = f"""
import sys, json, torch
sys.modules['trainer'] = None  # not importable here
from safetensors.torch import load_file
sys.path.insert(0, {str(os.path.dirname(__file__))!r})
index = json.load(open({str(tmp_path / 'w' / 'model.safetensors.index.json')!r}))
state = {{}}
for name in sorted(set(index['weight_map'].values())):
    state.update(load_file({str(tmp_path / 'w')!r} + '/' + name))
from test_checkpoint_plain import Tied
torch.manual_seed(1)
m = Tied()
m.load_state_dict(state)
torch.save(m.state_dict(), {str(tmp_path / 'roundtrip.pt')!r})
"""
    (tmp_path / "run.py").write_text(script)
    result = subprocess.run([sys.executable, str(tmp_path / "run.py")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    back = torch.load(tmp_path / "roundtrip.pt", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_trainer_save_model_single_file(tmp_path, make_trainer):
    trainer = make_trainer(default_root_dir=str(tmp_path), max_epochs=1, enable_checkpointing=False)
    model = BoringModel()
    trainer.fit(model, regression_loader())
    assert trainer.save_model(str(tmp_path / "final")) == ["model.safetensors"]
    from safetensors.torch import load_file
    back = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert torch.equal(back["layer.weight"], model.layer.weight)


# -- the Accelerator door -------------------------------------------------------------------------------

class Counter:
    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def _door(tmp_path, state_dir=None, steps=6, save_at=None):
    seed_everything(0)
    accelerator = Accelerator(cpu=True, mixed_precision="fp16", gradient_accumulation_steps=2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.9)
    counter = Counter()
    accelerator.register_for_checkpointing(counter)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    if state_dir is not None:
        accelerator.load_state(state_dir)
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(4, 4, generator=g), torch.randn(4, 1, generator=g)) for _ in range(steps)]
    start = counter.n
    for i in range(start, steps):
        x, y = data[i]
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            accelerator.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad()
        counter.n = i + 1
        if save_at == counter.n:
            accelerator.save_state(str(tmp_path / "state"))
            return None
    return [p.detach().clone() for p in model.parameters()]


def test_accelerator_save_state_then_load_state_continues_exactly(tmp_path):
    expected = _door(tmp_path)
    _door(tmp_path, save_at=4)
    assert os.listdir(tmp_path / "state") == ["state.ckpt"]
    got = _door(tmp_path, state_dir=str(tmp_path / "state"))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_accelerator_load_state_with_other_objects_says_what_differs(tmp_path):
    _door(tmp_path, save_at=2)
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(4, 8))
    with pytest.raises(CheckpointError, match=r"holds 1 optimizers but this Accelerator has 0"):
        accelerator.load_state(str(tmp_path / "state"))
    with pytest.raises(FileNotFoundError, match=r"no such directory"):
        accelerator.load_state(str(tmp_path / "missing"))


class NanGradientAt(BoringModel):
    """A finite loss whose gradient is NaN at one batch (the unselected branch of a where)."""

    def __init__(self, bad_batch):
        super().__init__()
        self.bad_batch = bad_batch

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if batch_idx == self.bad_batch:
            loss = torch.where(torch.tensor(True), loss, (self.layer.weight.sum() * 0 - 1).sqrt())
        return loss


@pytest.mark.parametrize("async_save", [False, True])
def test_non_finite_parameters_never_replace_a_checkpoint(tmp_path, async_save):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path), every_n_train_steps=1, save_top_k=1, save_last=True,
                           async_save=async_save)
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[ckpt])
    with pytest.raises(FloatingPointError, match=r"parameters are not finite at global_step 5 \(epoch 0; NaN/inf in "
                                                 r"layer.weight\).*the last one, .*last.ckpt, is from "
                                                 r"global_step 4\).*gradient_clip_val"):
        trainer.fit(NanGradientAt(bad_batch=4), regression_loader(n=64, batch_size=4))
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=4.ckpt", "last.ckpt"]  # the step-4 file was not evicted
    for name in os.listdir(tmp_path):
        content = safe_load(str(tmp_path / name))
        assert content["global_step"] == 4 and all(torch.isfinite(v).all() for v in content["state_dict"].values())


def test_non_finite_parameters_skip_the_save_when_training_is_told_to_go_on(tmp_path):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path), every_n_train_steps=1, save_last=True)
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[ckpt],
                      stop_on_nonfinite_loss=False)
    with pytest.warns(UserWarning, match=r"not finite at global_step 5 .*Training goes on"):
        trainer.fit(NanGradientAt(bad_batch=4), regression_loader(n=64, batch_size=4))
    assert trainer.global_step == 16 and safe_load(str(tmp_path / "last.ckpt"))["global_step"] == 4


def test_a_training_metric_ranks_step_checkpoints_read_back_only_on_saving_steps(tmp_path, monkeypatch):
    losses = {}

    class Record(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses[trainer.global_step] = float((outputs["loss"] if isinstance(outputs, dict) else outputs).detach())

    ckpt = ModelCheckpoint(dirpath=str(tmp_path), monitor="train/loss", every_n_train_steps=3, save_top_k=2,
                           filename="{step}")
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, log_every_n_steps=50,
                      callbacks=[Record(), ckpt])
    flushes = []
    real_flush = trainer.fit_loop.metrics.flush_train
    monkeypatch.setattr(trainer.fit_loop.metrics, "flush_train", lambda: (flushes.append(trainer.global_step), real_flush()))
    trainer.fit(BoringModel(), regression_loader(n=64, batch_size=4))
    saved_steps = [3, 6, 9, 12, 15]
    best = sorted(saved_steps, key=lambda s: losses[s])[:2]
    assert sorted(ckpt.best_k_models.values()) == pytest.approx(sorted(losses[s] for s in best))
    assert sorted(os.listdir(tmp_path)) == sorted(f"step={s}.ckpt" for s in best)
    # read back on the saving steps (and at the epoch's end), not on the 11 others
    assert [s for s in flushes if s not in saved_steps] == [16] * flushes.count(16)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KB tmpfs (needs the right to mount; skipped elsewhere)."""
    where = tmp_path / "small"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield where
    subprocess.run(["umount", str(where)], capture_output=True)


def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(small_disk):
    from trainer.strategies.checkpoint_io import DiskFullError

    path = str(small_disk / "last.ckpt")
    atomic_save({"w": torch.ones(10)}, path)
    with pytest.raises(DiskFullError, match=r"No space left on .*small' while writing 'last.ckpt' \(about 4\.0 MB "
                                            r"needed, .* MB free\)\. Nothing was replaced") as caught:
        atomic_save({"w": torch.zeros(1000, 1000)}, path)
    assert "unexpected pos" in str(caught.value.__cause__)  # torch's own error kept as the cause
    assert os.listdir(small_disk) == ["last.ckpt"] and torch.equal(safe_load(path)["w"], torch.ones(10))


@pytest.mark.parametrize("entry", ["../outside/model.safetensors", "/etc/passwd", "sub/model.safetensors"])
def test_load_weights_refuses_index_entries_outside_its_directory(tmp_path, entry):
    from trainer.strategies.safetensors_weights import load_weights

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": entry}}))
    with pytest.raises(CheckpointError, match=r"names weight files outside its directory"):
        load_weights(str(tmp_path / "w"))


def test_a_second_live_run_in_the_same_checkpoint_directory_is_refused_and_a_dead_ones_lock_is_not_held(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from trainer.strategies.checkpoint_directories import lock_directory; "
        f"lock_directory({str(tmp_path / 'ckpts')!r}); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False,
                          callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "ckpts"))])
        with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {holder.pid} on .*\), which is still "
                                               r"alive.*ModelCheckpoint\(dirpath=\.\.\.\)"):
            trainer.fit(BoringModel(), regression_loader())
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "ckpts" / ".lock").exists()  # the killed holder's file is still there, its lock is not
    two = [ModelCheckpoint(dirpath=str(tmp_path / "ckpts")), ModelCheckpoint(dirpath=str(tmp_path / "ckpts"),
                                                                             filename="{step}")]
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, callbacks=two)  # one run, two callbacks
    trainer.fit(BoringModel(), regression_loader())
    assert sorted(os.listdir(tmp_path / "ckpts")) == ["epoch=0-step=8.ckpt", "step=8.ckpt"]  # lock released
