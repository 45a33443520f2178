"""Callback hooks called the way Lightning code calls them: by keyword with ``pl_module=``, and a
``ModelCheckpoint`` pointed at a remote URL refused at setup instead of written to a local folder
named after the URL's scheme."""

from __future__ import annotations

import os

import pytest

from trainer.callbacks import Callback, EarlyStopping, ModelCheckpoint
from tests.helpers import BoringModel, regression_loader


class Recorder(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def setup(self, trainer, module, stage):
        self.seen.append(("setup", module, stage))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seen.append(("batch_end", module, batch_idx))


class LightningNamed(Callback):
    """A user's callback written with Lightning's parameter name: left as it is."""

    def setup(self, trainer, pl_module, stage):
        self.got = pl_module


def test_hooks_take_the_module_by_lightnings_keyword_pl_module(make_trainer):
    trainer, model = make_trainer(), BoringModel()
    rec = Recorder()
    rec.setup(trainer=trainer, pl_module=model, stage="fit")
    rec.setup(trainer, model, "fit")
    rec.setup(trainer, module=model, stage="fit")
    rec.on_train_batch_end(trainer, pl_module=model, outputs=None, batch=None, batch_idx=3)
    assert rec.seen == [("setup", model, "fit")] * 3 + [("batch_end", model, 3)]
    # the library's callbacks and the base class's no-op hooks too
    ModelCheckpoint(dirpath=os.getcwd()).setup(trainer=trainer, pl_module=model, stage="validate")
    EarlyStopping(monitor="x").setup(trainer=trainer, pl_module=model, stage="fit")
    Callback().on_fit_start(trainer=trainer, pl_module=model)
    named = LightningNamed()
    named.setup(trainer, pl_module=model, stage="fit")
    assert named.got is model


def test_the_module_given_twice_is_refused_naming_both_forms(make_trainer):
    trainer, model = make_trainer(), BoringModel()
    with pytest.raises(TypeError, match=r"Recorder.setup\(\) got the module twice.*pass it once"):
        Recorder().setup(trainer, model, pl_module=model, stage="fit")
    with pytest.raises(TypeError, match="got the module twice"):
        Recorder().setup(trainer, module=model, pl_module=model, stage="fit")


def test_an_overriding_hook_is_still_told_apart_from_the_base_no_op():
    # the Trainer calls only overridden hooks: the keyword wrapper must not make every hook look overridden
    class OnlySetup(Callback):
        def setup(self, trainer, module, stage): ...

    assert OnlySetup.on_train_batch_end is Callback.on_train_batch_end
    assert OnlySetup.setup is not Callback.setup


@pytest.mark.parametrize("save_last", [True, "link", None])
def test_a_remote_url_dirpath_is_refused_at_setup_and_nothing_is_written_locally(save_last, tmp_path, make_trainer):
    callback = ModelCheckpoint(dirpath="memory://bucket/run", save_last=save_last)
    trainer = make_trainer(max_epochs=1, callbacks=[callback], default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"dirpath='memory://bucket/run'.*remote filesystem URL.*only supported for "
                                         r"local file paths.*mounted filesystem"):
        trainer.fit(BoringModel(), regression_loader(16, 8))
    assert not os.path.exists("memory:")  # before, the URL was made a local path: ./memory:/bucket/run
    assert trainer.global_step == 0
