"""The golden hook order: every module hook, step method and callback hook fired by a small run,
compared with the list written out below."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trainer.callbacks import Callback
from trainer.callbacks.base import HOOK_NAMES
from trainer import Trainer
from tests.helpers import BoringModel, regression_loader

_BATCH_IDX_POS = {"_batch_start": 1, "_batch_end": 2}  # where batch_idx sits in a batch hook's arguments


def _label(who: str, name: str, args: tuple) -> str:
    for suffix, pos in _BATCH_IDX_POS.items():
        if name.endswith(suffix):
            extra = f", dl{args[pos + 1]}" if len(args) > pos + 1 else ""
            return f"{who}.{name}({args[pos]}{extra})"
    if name in ("setup", "teardown"):
        return f"{who}.{name}({args[0]})"
    return f"{who}.{name}"


class Recorded(BoringModel):
    """BoringModel that records its hooks and step methods into ``self.calls``."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def configure_model(self):
        self.calls.append("module.configure_model")

    def configure_optimizers(self):
        self.calls.append("module.configure_optimizers")
        return super().configure_optimizers()

    def training_step(self, batch, batch_idx):
        self.calls.append(f"module.training_step({batch_idx})")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.calls.append(f"module.validation_step({batch_idx})")
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self.calls.append(f"module.test_step({batch_idx})")
        return super().test_step(batch, batch_idx)

    def predict_step(self, batch, batch_idx):
        self.calls.append(f"module.predict_step({batch_idx})")
        return super().predict_step(batch, batch_idx)


class RecordingCallback(Callback):
    def __init__(self, calls: list[str], name: str = "cb") -> None:
        self.calls, self.name = calls, name


def _install_recorders() -> None:
    def module_hook(name):
        def hook(self, *args: Any):
            self.calls.append(_label("module", name, args))
        return hook

    def callback_hook(name):
        def hook(self, trainer, module, *args: Any):
            self.calls.append(_label(self.name, name, args))
        return hook

    for name in HOOK_NAMES:
        setattr(Recorded, name, module_hook(name))
        setattr(RecordingCallback, name, callback_hook(name))


_install_recorders()


def _both(*hooks: str) -> list[str]:
    """Each hook on the module, then on the callback (the documented dispatch order)."""
    return [f"{who}.{hook}" for hook in hooks for who in ("module", "cb")]


# A validation run over two batches (as inside fit, and in trainer.validate).
VALIDATION = [
    "module.on_validation_start", "cb.on_validation_start",
    "module.on_validation_epoch_start", "cb.on_validation_epoch_start",
    "module.on_validation_batch_start(0)", "cb.on_validation_batch_start(0)",
    "module.validation_step(0)",
    "module.on_validation_batch_end(0)", "cb.on_validation_batch_end(0)",
    "module.on_validation_batch_start(1)", "cb.on_validation_batch_start(1)",
    "module.validation_step(1)",
    "module.on_validation_batch_end(1)", "cb.on_validation_batch_end(1)",
    "module.on_validation_epoch_end", "cb.on_validation_epoch_end",
    "module.on_validation_end", "cb.on_validation_end",
]


def test_golden_hook_order_of_fit_with_validation_and_accumulation(make_trainer):
    calls: list[str] = []
    trainer = make_trainer(callbacks=[RecordingCallback(calls)], max_epochs=1, accumulate_grad_batches=2,
                           num_sanity_val_steps=1)
    # 3 training batches: a window of 2 (steps after batch 1) and a short window of 1 (steps after batch 2)
    trainer.fit(Recorded(calls), regression_loader(24, 8), regression_loader(16, 8))
    assert trainer.global_step == 2
    expected = [
        "module.setup(fit)", "cb.setup(fit)",
        "module.configure_model",
        "module.configure_optimizers",
        "module.on_fit_start", "cb.on_fit_start",
        # sanity check: one batch
        "module.on_sanity_check_start", "cb.on_sanity_check_start",
        "module.on_validation_start", "cb.on_validation_start",
        "module.on_validation_epoch_start", "cb.on_validation_epoch_start",
        "module.on_validation_batch_start(0)", "cb.on_validation_batch_start(0)",
        "module.validation_step(0)",
        "module.on_validation_batch_end(0)", "cb.on_validation_batch_end(0)",
        "module.on_validation_epoch_end", "cb.on_validation_epoch_end",
        "module.on_validation_end", "cb.on_validation_end",
        "module.on_sanity_check_end", "cb.on_sanity_check_end",
        # training
        "module.on_train_start", "cb.on_train_start",
        "module.on_train_epoch_start", "cb.on_train_epoch_start",
        # batch 0: first micro-batch of a window, no step
        "module.on_train_batch_start(0)", "cb.on_train_batch_start(0)",
        "module.training_step(0)",
        "module.on_before_backward", "cb.on_before_backward",
        "module.on_after_backward", "cb.on_after_backward",
        "module.on_train_batch_end(0)", "cb.on_train_batch_end(0)",
        # batch 1: closes the window, steps
        "module.on_train_batch_start(1)", "cb.on_train_batch_start(1)",
        "module.training_step(1)",
        "module.on_before_backward", "cb.on_before_backward",
        "module.on_after_backward", "cb.on_after_backward",
        "module.on_before_optimizer_step", "cb.on_before_optimizer_step",
        "module.on_before_zero_grad", "cb.on_before_zero_grad",
        "module.on_train_batch_end(1)", "cb.on_train_batch_end(1)",
        # batch 2: the epoch's last batch closes the short window, steps
        "module.on_train_batch_start(2)", "cb.on_train_batch_start(2)",
        "module.training_step(2)",
        "module.on_before_backward", "cb.on_before_backward",
        "module.on_after_backward", "cb.on_after_backward",
        "module.on_before_optimizer_step", "cb.on_before_optimizer_step",
        "module.on_before_zero_grad", "cb.on_before_zero_grad",
        "module.on_train_batch_end(2)", "cb.on_train_batch_end(2)",
        # end-of-epoch validation runs before the epoch-end hooks
        *VALIDATION,
        # the default ModelCheckpoint (after the recorder in the callback list) saves after validation
        "module.on_save_checkpoint", "cb.on_save_checkpoint",
        "module.on_train_epoch_end", "cb.on_train_epoch_end",
        "module.on_train_end", "cb.on_train_end",
        "module.on_fit_end", "cb.on_fit_end",
        "module.teardown(fit)", "cb.teardown(fit)",
    ]
    assert calls == expected


def test_golden_hook_order_of_validate(make_trainer):
    calls: list[str] = []
    make_trainer(callbacks=[RecordingCallback(calls)]).validate(Recorded(calls), regression_loader(16, 8))
    assert calls == ["module.setup(validate)", "cb.setup(validate)", "module.configure_model",
                     *VALIDATION,
                     "module.teardown(validate)", "cb.teardown(validate)"]


def test_golden_hook_order_of_test(make_trainer):
    calls: list[str] = []
    make_trainer(callbacks=[RecordingCallback(calls)]).test(Recorded(calls), regression_loader(8, 8))
    assert calls == [
        "module.setup(test)", "cb.setup(test)", "module.configure_model",
        *_both("on_test_start", "on_test_epoch_start"),
        "module.on_test_batch_start(0)", "cb.on_test_batch_start(0)",
        "module.test_step(0)",
        "module.on_test_batch_end(0)", "cb.on_test_batch_end(0)",
        *_both("on_test_epoch_end", "on_test_end"),
        "module.teardown(test)", "cb.teardown(test)",
    ]


def test_golden_hook_order_of_predict(make_trainer):
    calls: list[str] = []
    make_trainer(callbacks=[RecordingCallback(calls)]).predict(Recorded(calls), regression_loader(8, 8))
    assert calls == [
        "module.setup(predict)", "cb.setup(predict)", "module.configure_model",
        *_both("on_predict_start", "on_predict_epoch_start"),
        "module.on_predict_batch_start(0)", "cb.on_predict_batch_start(0)",
        "module.predict_step(0)",
        "module.on_predict_batch_end(0)", "cb.on_predict_batch_end(0)",
        *_both("on_predict_epoch_end", "on_predict_end"),
        "module.teardown(predict)", "cb.teardown(predict)",
    ]


def test_hook_order_when_a_step_raises(make_trainer):
    class Fails(Recorded):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("step failed")

    calls: list[str] = []
    trainer = make_trainer(callbacks=[RecordingCallback(calls)], max_epochs=1, num_sanity_val_steps=0)
    with pytest.raises(RuntimeError, match="step failed"):
        trainer.fit(Fails(calls), regression_loader(8, 8))
    assert calls[-6:] == ["module.on_train_batch_start(0)", "cb.on_train_batch_start(0)",
                          "module.on_exception", "cb.on_exception",
                          "module.teardown(fit)", "cb.teardown(fit)"]


def test_callbacks_run_in_the_order_given_after_the_module():
    calls: list[str] = []
    trainer = Trainer(logger=False, enable_progress_bar=False, max_epochs=1,
                      callbacks=[RecordingCallback(calls, "first"), RecordingCallback(calls, "second")])
    trainer.fit(Recorded(calls), regression_loader(8, 8))
    assert calls[:6] == ["module.setup(fit)", "first.setup(fit)", "second.setup(fit)",
                         "module.configure_model", "module.configure_optimizers", "module.on_fit_start"]
    assert calls[-3:] == ["module.teardown(fit)", "first.teardown(fit)", "second.teardown(fit)"]


def test_epoch_end_hooks_see_the_epoch_metrics_in_callbacks_only_after_the_module_logged():
    """The module's on_train_epoch_end may log; callbacks' on_train_epoch_end then see it."""
    seen = {}

    class LogsAtEpochEnd(BoringModel):
        def on_train_epoch_end(self):
            self.log("epoch_value", torch.tensor(3.0))

    class Reads(Callback):
        def on_train_epoch_end(self, trainer, module):
            seen.update(trainer.callback_metrics)

    Trainer(logger=False, enable_progress_bar=False, max_epochs=1, callbacks=[Reads()]).fit(
        LogsAtEpochEnd(), regression_loader(8, 8))
    assert seen["epoch_value"] == 3.0


def test_eval_batch_hooks_get_dataloader_idx_only_with_several_loaders(make_trainer):
    """As in Lightning: hooks written as ``(batch, batch_idx)`` run with one loader; with several
    each call names its loader."""
    seen = []

    class NoIdx(BoringModel):
        def on_validation_batch_start(self, batch, batch_idx):
            seen.append(("module", batch_idx))

    class CallbackNoIdx(Callback):
        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(("callback", batch_idx))

    class WithIdx(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            return super().validation_step(batch, batch_idx)

        def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append(("loader", dataloader_idx))

    trainer = make_trainer(callbacks=[CallbackNoIdx()], enable_checkpointing=False)
    trainer.validate(NoIdx(), regression_loader(16, 8))
    trainer.test(NoIdx(), regression_loader(8, 8))
    trainer.validate(WithIdx(), [regression_loader(8, 8), regression_loader(8, 8)])
    assert seen == [("module", 0), ("module", 1), ("callback", 0), ("loader", 0), ("loader", 1)]


def test_model_eval_and_train_hooks_decide_the_mode_during_evaluation(make_trainer):
    """Lightning's on_validation_model_eval/_train, on_test_model_eval, on_predict_model_eval: an
    override that keeps dropout on (Monte-Carlo dropout) is what evaluation runs with."""
    modes = []

    class KeepsDropout(BoringModel):
        def on_validation_model_eval(self):
            self.train()  # dropout stays on

        def on_validation_model_train(self):
            modes.append(("back", self.training))
            self.train()

        def validation_step(self, batch, batch_idx):
            modes.append(("val", self.training))
            return super().validation_step(batch, batch_idx)

        def test_step(self, batch, batch_idx):
            modes.append(("test", self.training))

    model = KeepsDropout()
    trainer = make_trainer(max_epochs=1, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(model, regression_loader(8, 8), regression_loader(8, 8))
    trainer.test(model, regression_loader(8, 8))  # the default on_test_model_eval: eval mode
    assert modes == [("val", True), ("back", True), ("test", False)]

    class Fails(BoringModel):
        def on_predict_model_eval(self):
            raise RuntimeError("no eval")

    with pytest.raises(RuntimeError, match="no eval") as info:
        trainer.predict(Fails(), regression_loader(8, 8))
    assert "raised in Fails (the TrainModule).on_predict_model_eval" in info.value.__notes__[0]
