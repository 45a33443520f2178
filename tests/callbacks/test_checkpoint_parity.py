"""ModelCheckpoint and OnExceptionCheckpoint as a Lightning user expects them (issue 24): Path
arguments everywhere, ``~`` in dirpath, last.ckpt without top-k saves, saving on an exception,
the version counter, Lightning's class attributes and bookkeeping, and MisconfigurationException."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch
import yaml

from trainer import Trainer
from trainer.callbacks import Callback, EarlyStopping, MissingMetricError, ModelCheckpoint, OnExceptionCheckpoint
from trainer.strategies.checkpoint_io import safe_load
from trainer.utils.exceptions import MisconfigurationException
from tests.helpers import BoringModel, regression_loader


def _fit(trainer: Trainer, model=None, **kw):
    trainer.fit(model or BoringModel(), regression_loader(32, 8), regression_loader(16, 8), **kw)
    return trainer


# -- pathlib.Path arguments: nothing written needs an unsafe load ---------------------------------------

class PathHparams(BoringModel):
    def __init__(self, data_dir: pathlib.Path = pathlib.Path("/data/set")) -> None:
        super().__init__()
        self.save_hyperparameters()


class PathState(Callback):
    """A user's callback whose state and on_save_checkpoint hold Paths."""

    def __init__(self, where: pathlib.Path) -> None:
        self.where = where

    def state_dict(self):
        return {"where": self.where, "seen": [self.where / "a", (self.where / "b",)]}

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint["extra"] = {self.where: self.where / "x"}


def test_every_writer_with_path_arguments_writes_a_safely_loadable_checkpoint(tmp_path, make_trainer):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="val/loss", save_last=True)
    trainer = make_trainer(default_root_dir=tmp_path, max_epochs=2, callbacks=[ckpt_cb, PathState(tmp_path)])
    _fit(trainer, PathHparams())
    assert isinstance(ckpt_cb.dirpath, str) and ckpt_cb.dirpath == str(tmp_path / "ckpts")
    trainer.save_checkpoint(tmp_path / "manual.ckpt")
    for path in (ckpt_cb.best_model_path, ckpt_cb.last_model_path, tmp_path / "manual.ckpt"):
        ckpt = safe_load(str(path))  # weights_only=True: refuses any pickled class such as PosixPath
        assert ckpt["hparams"]["data_dir"] == "/data/set"
        assert ckpt["metadata"]["config"]["default_root_dir"] == str(tmp_path)
        assert ckpt["callbacks"]["PathState"] == {"where": str(tmp_path),
                                                  "seen": [str(tmp_path / "a"), (str(tmp_path / "b"),)]}
        assert ckpt["extra"] == {str(tmp_path): str(tmp_path / "x")}
    # what a pytest user does next: evaluate the best one, resume from a Path
    trainer.test(PathHparams(), regression_loader(16, 8), ckpt_path="best")
    again = make_trainer(default_root_dir=tmp_path, max_epochs=3, enable_checkpointing=False)
    _fit(again, PathHparams(), ckpt_path=pathlib.Path(ckpt_cb.last_model_path))
    assert again.current_epoch == 3


def test_a_state_dict_without_paths_is_written_as_it_is(tmp_path, make_trainer):
    trainer = make_trainer(default_root_dir=str(tmp_path), max_epochs=1, enable_checkpointing=False)
    _fit(trainer)
    ckpt = trainer.dump_checkpoint()
    assert ckpt["state_dict"] is not None and hasattr(ckpt["state_dict"], "_metadata")  # not rebuilt


def test_dirpath_expands_the_home_directory(tmp_path, monkeypatch, make_trainer):
    monkeypatch.setenv("HOME", str(tmp_path))
    cb = ModelCheckpoint(dirpath="~/ckpts")
    assert cb.dirpath == str(tmp_path / "ckpts")
    _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=1, callbacks=[cb]))
    assert os.listdir(tmp_path / "ckpts") == ["epoch=0-step=4.ckpt"]
    assert not (tmp_path / "~").exists()


# -- last.ckpt ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"save_top_k": 0}, {"every_n_epochs": 5}, {"save_top_k": 0, "every_n_epochs": 0}])
def test_save_last_writes_last_ckpt_at_the_end_when_no_save_fell_there(kwargs, tmp_path, make_trainer):
    cb = ModelCheckpoint(dirpath=tmp_path / "c", save_last=True, **kwargs)
    _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[cb]))
    assert cb.last_model_path == str(tmp_path / "c" / "last.ckpt")
    if kwargs.get("save_top_k") == 0:
        assert os.listdir(tmp_path / "c") == ["last.ckpt"] and cb.best_model_path == ""
    assert safe_load(cb.last_model_path)["global_step"] == 8
    resumed = make_trainer(default_root_dir=str(tmp_path), max_epochs=3,
                           callbacks=[ModelCheckpoint(dirpath=tmp_path / "c", save_last=True, **kwargs)])
    _fit(resumed, ckpt_path="last")
    assert resumed.global_step == 12  # continued from step 8, not from scratch


def test_a_rerun_into_the_same_directory_keeps_the_earlier_files_and_versions_the_new(tmp_path, make_trainer):
    def run():
        cb = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="epoch", mode="max", save_top_k=-1,
                             save_last=True)
        _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[cb]))
        return cb

    first, second = run(), run()
    assert sorted(map(os.path.basename, first.best_k_models)) == ["epoch=0.ckpt", "epoch=1.ckpt"]
    assert sorted(map(os.path.basename, second.best_k_models)) == ["epoch=0-v1.ckpt", "epoch=1-v1.ckpt"]
    assert os.path.basename(second.last_model_path) == "last-v1.ckpt"
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-v1.ckpt", "epoch=0.ckpt", "epoch=1-v1.ckpt", "epoch=1.ckpt",
                                            "last-v1.ckpt", "last.ckpt"]
    # "last" resumes from the newest of last.ckpt / last-v1.ckpt
    os.utime(tmp_path / "last.ckpt", (1, 1))
    resumed = make_trainer(default_root_dir=str(tmp_path), max_epochs=3,
                           callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True, enable_version_counter=False)])
    _fit(resumed, ckpt_path="last")
    assert resumed.global_step == 12


def test_without_the_version_counter_a_rerun_overwrites(tmp_path, make_trainer):
    for _ in range(2):
        cb = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="epoch", mode="max", save_top_k=-1,
                             save_last=True, enable_version_counter=False)
        _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[cb]))
    assert sorted(os.listdir(tmp_path)) == ["epoch=0.ckpt", "epoch=1.ckpt", "last.ckpt"]


def test_the_one_latest_checkpoint_is_replaced_under_its_own_name(tmp_path, make_trainer):
    seen = []

    class Look(Callback):
        def on_train_epoch_start(self, trainer, module):
            seen.append(sorted(n for n in os.listdir(tmp_path) if n.endswith(".ckpt")))

    cb = ModelCheckpoint(dirpath=tmp_path, filename="model", monitor=None, save_top_k=1)
    _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=3, callbacks=[cb, Look()]))
    assert seen == [[], ["model.ckpt"], ["model.ckpt"]]  # never model-v1.ckpt: the file it replaces is its own


class TpkcCheckpoint(ModelCheckpoint):
    FILE_EXTENSION = ".tpkc"
    CHECKPOINT_NAME_LAST = "final-{epoch}"


def test_file_extension_and_last_name_set_on_a_subclass_are_used(tmp_path, make_trainer):
    cb = TpkcCheckpoint(dirpath=tmp_path, monitor="val/loss", save_last=True)
    _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[cb]))
    names = sorted(os.listdir(tmp_path))
    assert names == sorted({os.path.basename(cb.best_model_path), "final-epoch=1.tpkc"})
    assert all(n.endswith(".tpkc") for n in names)
    assert cb.last_model_path == str(tmp_path / "final-epoch=1.tpkc")  # the epoch-0 one was replaced
    assert ModelCheckpoint.FILE_EXTENSION == ".ckpt" and ModelCheckpoint.CHECKPOINT_NAME_LAST == "last"
    resumed = make_trainer(default_root_dir=str(tmp_path), max_epochs=3,
                           callbacks=[TpkcCheckpoint(dirpath=tmp_path, monitor="val/loss", save_last=True)])
    _fit(resumed, ckpt_path="last")  # finds final-epoch=1.tpkc by the subclass's name and extension
    assert resumed.global_step == 12 and os.path.exists(tmp_path / "final-epoch=2.tpkc")


# -- bookkeeping: monitor="epoch"/"step", kth best, to_yaml, state -------------------------------------

def test_monitor_epoch_and_step_rank_by_the_trainers_counters(tmp_path, make_trainer):
    by_epoch = ModelCheckpoint(dirpath=tmp_path / "e", filename="{epoch}", monitor="epoch", mode="max", save_top_k=2)
    by_step = ModelCheckpoint(dirpath=tmp_path / "s", filename="{step}", monitor="step", mode="min", save_top_k=1,
                              every_n_train_steps=3)
    _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=3, callbacks=[by_epoch, by_step]))
    assert sorted(os.listdir(tmp_path / "e")) == ["epoch=1.ckpt", "epoch=2.ckpt"]
    assert by_epoch.best_model_path == str(tmp_path / "e" / "epoch=2.ckpt") and by_epoch.best_model_score == 2
    assert by_epoch.kth_best_model_path == str(tmp_path / "e" / "epoch=1.ckpt") and by_epoch.kth_value == 1
    assert os.listdir(tmp_path / "s") == ["step=3.ckpt"]  # the smallest step stays best


def test_kth_best_to_yaml_and_state_round_trip(tmp_path, make_trainer):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="epoch", mode="min", save_top_k=2)
    assert cb.kth_best_model_path == "" and cb.kth_value == float("inf")
    _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=3, callbacks=[cb]))
    assert cb.kth_best_model_path == str(tmp_path / "epoch=1-step=8.ckpt") and cb.kth_value == 1
    assert cb.current_score == 1  # the last score that was saved (epoch 2's was not among the best 2)
    cb.to_yaml()
    assert yaml.safe_load((tmp_path / "best_k_models.yaml").read_text()) == {
        str(tmp_path / "epoch=0-step=4.ckpt"): 0.0, str(tmp_path / "epoch=1-step=8.ckpt"): 1.0}
    restored = ModelCheckpoint(dirpath=tmp_path, monitor="epoch", save_top_k=2)
    restored.load_state_dict(cb.state_dict())
    assert (restored.kth_best_model_path, restored.kth_value, restored.best_k_models) == (
        cb.kth_best_model_path, cb.kth_value, cb.best_k_models)
    elsewhere = ModelCheckpoint(dirpath=tmp_path / "other", monitor="epoch", save_top_k=2)
    with pytest.warns(UserWarning, match="only best_model_path is restored"):
        elsewhere.load_state_dict(cb.state_dict())
    assert elsewhere.best_model_path == cb.best_model_path
    assert (elsewhere.best_k_models, elsewhere.kth_best_model_path, elsewhere.best_model_score) == ({}, "", None)


# -- save on exception ----------------------------------------------------------------------------------

class FailsAt(BoringModel):
    def __init__(self, where: str, epoch: int = 1) -> None:
        super().__init__()
        self.where, self.epoch = where, epoch

    def _maybe(self, where):
        at = where == "on_fit_end" or self.current_epoch == self.epoch
        if where == self.where and at and not self.trainer.sanity_checking:
            raise RuntimeError(f"boom in {where}")

    def training_step(self, batch, batch_idx):
        if batch_idx == 1:
            self._maybe("training_step")
        return super().training_step(batch, batch_idx)

    def on_after_backward(self):
        self._maybe("on_after_backward")

    def validation_step(self, batch, batch_idx):
        self._maybe("validation_step")
        return super().validation_step(batch, batch_idx)

    def on_fit_end(self):
        self._maybe("on_fit_end")


@pytest.mark.parametrize("where, step", [("training_step", 5), ("on_after_backward", 4), ("validation_step", 8),
                                         ("on_fit_end", 8)])
def test_save_on_exception_saves_the_state_where_fit_failed(where, step, tmp_path, make_trainer):
    cb = ModelCheckpoint(dirpath=tmp_path, filename="crash-{step}", save_on_exception=True, every_n_epochs=7,
                         save_last=True)
    trainer = make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[cb])
    with pytest.raises(RuntimeError, match=f"boom in {where}"):
        _fit(trainer, FailsAt(where, epoch=1))
    ckpt = safe_load(str(tmp_path / f"crash-step={step}.ckpt"))
    assert ckpt["global_step"] == step and ckpt["state_dict"]["layer.weight"].shape == (1, 4)
    assert cb.last_model_path == str(tmp_path / "last.ckpt") and safe_load(cb.last_model_path)["global_step"] == step


class RaisesInCallback(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 2:
            raise KeyboardInterrupt


def test_save_on_exception_covers_other_callbacks_and_interrupts(tmp_path, make_trainer):
    cb = ModelCheckpoint(dirpath=tmp_path, filename="crash", save_on_exception=True, every_n_epochs=7)
    with pytest.raises(KeyboardInterrupt):
        _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[cb, RaisesInCallback()]))
    assert safe_load(str(tmp_path / "crash.ckpt"))["global_step"] == 7


class FailsInSanityCheck(BoringModel):
    def validation_step(self, batch, batch_idx):
        if self.trainer.sanity_checking:
            raise RuntimeError("boom in sanity check")


class FailsInFirstStep(BoringModel):
    def training_step(self, batch, batch_idx):
        raise RuntimeError("boom before any step")


class FailsAtStep(BoringModel):
    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 2:
            raise RuntimeError("boom at step 2")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("case", ["sanity_check", "fast_dev_run", "saved_already", "first_step", "off"])
def test_save_on_exception_writes_nothing_when_there_is_nothing_new_to_keep(case, tmp_path, make_trainer):
    kw = {"every_n_train_steps": 2} if case == "saved_already" else {"every_n_epochs": 7}
    cb = ModelCheckpoint(dirpath=tmp_path, filename="crash", save_on_exception=case != "off", **kw)
    trainer_kw = {"num_sanity_val_steps": 1} if case == "sanity_check" else {}
    if case == "fast_dev_run":
        trainer_kw = {"fast_dev_run": 4}
    trainer = make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[cb], **trainer_kw)
    saves = []
    save = trainer.save_checkpoint
    trainer.save_checkpoint = lambda path, *a, **kw: (saves.append(trainer.global_step), save(path, *a, **kw))
    model = {"sanity_check": FailsInSanityCheck(), "first_step": FailsInFirstStep()}.get(case)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(trainer, model or FailsAtStep())
    assert saves == ([2] if case == "saved_already" else [])  # only the scheduled save at step 2


def test_on_exception_checkpoint_saves_on_failure_and_is_removed_after_a_good_fit(tmp_path, make_trainer):
    cb = OnExceptionCheckpoint(tmp_path / "oe")
    assert cb.ckpt_path == str(tmp_path / "oe" / "on_exception.ckpt")
    with pytest.raises(RuntimeError, match="boom in training_step"):
        _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[cb], enable_checkpointing=False),
             FailsAt("training_step"))
    assert safe_load(cb.ckpt_path)["global_step"] == 5
    resumed = make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[cb], enable_checkpointing=False)
    _fit(resumed, ckpt_path=cb.ckpt_path)
    assert resumed.global_step == 8 and not os.path.exists(cb.ckpt_path)  # stale once fit succeeded
    with pytest.raises(MisconfigurationException, match="filename=''"):
        OnExceptionCheckpoint(tmp_path, filename="")


# -- Lightning's checks and exception type -----------------------------------------------------------------

def test_checkpointing_off_with_a_model_checkpoint_callback_is_refused():
    with pytest.raises(MisconfigurationException, match=r"enable_checkpointing=False, callbacks=\[\.\.\., "
                                                         r"ModelCheckpoint\(\.\.\.\)\]\): checkpointing is off"):
        Trainer(enable_checkpointing=False, callbacks=[ModelCheckpoint()], logger=False)
    with pytest.raises(MisconfigurationException, match="barebones=True"):
        Trainer(barebones=True, callbacks=[ModelCheckpoint()])
    assert Trainer(enable_checkpointing=False, logger=False).checkpoint_callback is None


@pytest.mark.parametrize("make", [
    lambda: ModelCheckpoint(mode="best"),
    lambda: ModelCheckpoint(save_top_k=-2),
    lambda: ModelCheckpoint(save_top_k=3),
    lambda: ModelCheckpoint(every_n_epochs=-1),
    lambda: ModelCheckpoint(every_n_train_steps=2, every_n_epochs=1),
    lambda: ModelCheckpoint(save_last="yes"),
    lambda: ModelCheckpoint(dirpath=3),
    lambda: EarlyStopping("x", mode="best"),
    lambda: EarlyStopping("x", patience=-1),
    lambda: Trainer(max_epochs=-5),
    lambda: Trainer(val_check_interval=0.0),
])
def test_bad_settings_raise_misconfiguration_which_is_a_value_error(make):
    with pytest.raises(MisconfigurationException) as info:
        make()
    assert isinstance(info.value, ValueError)


def test_a_missing_monitor_is_a_misconfiguration_and_still_a_key_error(tmp_path, make_trainer):
    with pytest.raises(MisconfigurationException) as info:
        _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=1,
                          callbacks=[ModelCheckpoint(dirpath=tmp_path, monitor="val/acc")]))
    assert isinstance(info.value, MissingMetricError) and isinstance(info.value, KeyError)


def test_state_keys_are_lightnings_and_states_saved_under_the_old_keys_still_resume(tmp_path, make_trainer):
    cb, es = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss"), EarlyStopping("val/loss", patience=5)
    assert cb.state_key == ("ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min', 'every_n_train_steps': 0, "
                            "'every_n_epochs': 1, 'train_time_interval': None}")
    assert es.state_key == "EarlyStopping{'monitor': 'val/loss', 'mode': 'min'}"
    _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[cb, es]))
    ckpt = torch.load(cb.best_model_path, weights_only=True)
    old = {"ModelCheckpoint{monitor='val/loss', mode='min', every_n_train_steps=0, every_n_epochs=1, "
           "train_time_interval=None}": ckpt["callbacks"].pop(cb.state_key),
           "EarlyStopping{monitor='val/loss', mode='min'}": ckpt["callbacks"].pop(es.state_key)}
    ckpt["callbacks"].update(old)  # as trainer 0.1 wrote them
    torch.save(ckpt, tmp_path / "old.ckpt")
    cb2, es2 = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss"), EarlyStopping("val/loss", patience=5)
    resumed = make_trainer(default_root_dir=str(tmp_path), max_epochs=2, callbacks=[cb2, es2])
    _fit(resumed, ckpt_path=str(tmp_path / "old.ckpt"))
    assert cb2.best_k_models == cb.best_k_models and es2.best_score == es.best_score


def test_a_step_that_returned_none_counts_as_run_for_the_exception_save(tmp_path, make_trainer):
    class SkipsThenFails(BoringModel):
        def training_step(self, batch, batch_idx):
            if batch_idx == 1:
                raise RuntimeError("boom after a skipped step")
            return None  # Lightning: skip this batch's optimizer step

    cb = ModelCheckpoint(dirpath=tmp_path, filename="crash", save_on_exception=True, every_n_epochs=7)
    with pytest.raises(RuntimeError, match="boom after a skipped step"):
        _fit(make_trainer(default_root_dir=str(tmp_path), max_epochs=1, callbacks=[cb]), SkipsThenFails())
    assert safe_load(str(tmp_path / "crash.ckpt"))["global_step"] == 0


def _fails_on_both_ranks(root: str):
    import warnings as _warnings

    class FailsAtStep3(BoringModel):
        def training_step(self, batch, batch_idx):
            if self.trainer.global_step == 3:
                raise RuntimeError("boom on every rank")
            return super().training_step(batch, batch_idx)

    callbacks = [ModelCheckpoint(dirpath=os.path.join(root, "mc"), filename="crash", save_on_exception=True,
                                 every_n_epochs=7), OnExceptionCheckpoint(os.path.join(root, "oe"))]
    trainer = Trainer(max_epochs=2, accelerator="cpu", strategy="ddp", logger=False, enable_progress_bar=False,
                      num_sanity_val_steps=0, default_root_dir=root, callbacks=callbacks)
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        try:
            trainer.fit(FailsAtStep3(), regression_loader(32, 4))
        except RuntimeError as err:
            failed = "boom on every rank" in str(err)
    notes = sorted(str(w.message).split(":")[0] for w in caught if "processes" in str(w.message))
    return failed, notes, sorted(os.listdir(root))


@pytest.mark.slow
def test_on_several_processes_the_exception_saves_are_skipped_with_a_warning(tmp_path):
    from tests.helpers.distributed import run_distributed

    ranks = run_distributed(_fails_on_both_ranks, root=str(tmp_path))
    assert ranks[0] == (True, ["ModelCheckpoint(save_on_exception=True)", "OnExceptionCheckpoint"], ["mc"])
    assert ranks[1][:2] == (True, [])  # rank zero alone warns
    assert os.listdir(tmp_path / "mc") == []  # no crash.ckpt, no oe/ directory


def test_accelerator_save_state_with_a_path_in_a_registered_object_loads_safely(tmp_path):
    from trainer import Accelerator

    class Where:
        def __init__(self, path):
            self.path = path

        def state_dict(self):
            return {"path": self.path}

        def load_state_dict(self, state):
            self.path = state["path"]

    acc = Accelerator(cpu=True)
    model = acc.prepare(torch.nn.Linear(2, 1))
    acc.register_for_checkpointing(Where(tmp_path / "data"))
    out = acc.save_state(tmp_path / "state")
    safe_load(os.path.join(out, "state.ckpt"))  # weights_only: a PosixPath would be refused
    again = Accelerator(cpu=True)
    again.prepare(torch.nn.Linear(2, 1))
    restored = Where(None)
    again.register_for_checkpointing(restored)
    again.load_state(out)
    assert restored.path == str(tmp_path / "data") and model is not None


# -- the default dirpath is the first logger's run folder (Lightning's rule) -------------------------------

@pytest.mark.parametrize("version, folder", [(None, "version_0"), (3, "version_3"), ("named", "named")])
def test_the_default_dirpath_is_the_loggers_run_folder(version, folder, tmp_path, make_trainer):
    from trainer.callbacks import CSVLogger

    logger = CSVLogger(tmp_path / "logs", name="exp", version=version)
    trainer = _fit(make_trainer(max_epochs=1, default_root_dir=tmp_path / "root", logger=logger))
    expected = os.path.join(str(tmp_path / "logs"), "exp", folder, "checkpoints")
    assert trainer.checkpoint_callback.dirpath == expected
    assert os.path.dirname(trainer.checkpoint_callback.best_model_path) == expected
    assert not (tmp_path / "root" / "checkpoints").exists()


def test_without_a_logger_the_default_dirpath_is_the_roots(tmp_path, make_trainer):
    trainer = _fit(make_trainer(max_epochs=1, default_root_dir=tmp_path, logger=False))
    assert trainer.checkpoint_callback.dirpath == str(tmp_path / "checkpoints")


def test_csv_logger_default_name_is_lightnings(tmp_path):
    from trainer.callbacks import CSVLogger

    assert CSVLogger(tmp_path).log_dir == os.path.join(str(tmp_path), "lightning_logs", "version_0")


def test_a_new_run_resumes_last_from_the_earlier_runs_version_folder(tmp_path, make_trainer):
    """Each run logs to a new version, so its checkpoint folder is new; ckpt_path="last" (the same command
    for the first run and every restart) finds what the run before wrote in its own version's folder."""
    from trainer.callbacks import CSVLogger

    def run(max_epochs):
        trainer = make_trainer(max_epochs=max_epochs, default_root_dir=tmp_path, logger=CSVLogger(tmp_path),
                               callbacks=[ModelCheckpoint(save_last=True)])
        return _fit(trainer, ckpt_path="last")

    first = run(1)
    assert first.checkpoint_callback.dirpath.endswith(os.path.join("lightning_logs", "version_0", "checkpoints"))
    second = run(2)
    assert second.checkpoint_callback.dirpath.endswith(os.path.join("version_1", "checkpoints"))
    assert second.global_step == 2 * first.global_step  # resumed after the first epoch: one more epoch ran
    assert os.path.exists(os.path.join(second.checkpoint_callback.dirpath, "last.ckpt"))
    third = run(3)  # the newest of the earlier runs' (version_1's), not the first's
    assert third.global_step == 3 * first.global_step
