"""LambdaCallback: one function per hook, called with the hook's arguments; other hooks never run."""

from __future__ import annotations

import pytest

from trainer.callbacks import Callback, LambdaCallback
from trainer.callbacks.base import HOOK_NAMES
from tests.helpers import BoringModel, regression_loader
from tests.helpers.trainers import LEAN


def test_each_given_hook_runs_with_the_hooks_arguments(make_trainer):
    seen = []
    cb = LambdaCallback(
        on_fit_start=lambda trainer, module: seen.append(("fit_start", trainer.global_step, type(module).__name__)),
        on_train_batch_end=lambda trainer, module, outputs, batch, batch_idx: seen.append(("batch_end", batch_idx)),
        on_train_epoch_end=lambda trainer, module: seen.append(("epoch_end", trainer.current_epoch)),
        setup=lambda trainer, module, stage: seen.append(("setup", stage)))
    trainer = make_trainer(max_epochs=2, callbacks=[cb], **LEAN)
    trainer.fit(BoringModel(), regression_loader(16, 8))
    assert seen == [("setup", "fit"), ("fit_start", 0, "BoringModel"), ("batch_end", 0), ("batch_end", 1),
                    ("epoch_end", 0), ("batch_end", 0), ("batch_end", 1), ("epoch_end", 1)]


def test_hooks_not_given_are_not_dispatched(make_trainer):
    from trainer.loops.hooks import Hooks

    cb = LambdaCallback(on_train_end=lambda trainer, module: None)
    hooks = Hooks(make_trainer(max_epochs=1), BoringModel(), [cb])
    assert [name for name in HOOK_NAMES if hooks.has(name)] == ["on_train_end"]
    assert isinstance(cb, Callback) and cb.state_key == "LambdaCallback"


def test_a_checkpoint_hook_can_add_to_the_checkpoint(make_trainer, tmp_path):
    cb = LambdaCallback(on_save_checkpoint=lambda trainer, module, ckpt: ckpt.update(extra=7))
    trainer = make_trainer(max_epochs=1, callbacks=[cb], **LEAN)
    trainer.fit(BoringModel(), regression_loader(16, 8))
    assert trainer.dump_checkpoint()["extra"] == 7


def test_unknown_hook_names_and_non_functions_are_refused():
    with pytest.raises(TypeError, match=r"LambdaCallback\(on_train_epoch_ends=...\): not a callback hook. "
                                        r"Did you mean 'on_train_epoch_end'\?"):
        LambdaCallback(on_train_epoch_ends=lambda trainer, module: None)
    with pytest.raises(TypeError, match=r"LambdaCallback\(on_fit_start=3\): expected a function"):
        LambdaCallback(on_fit_start=3)
