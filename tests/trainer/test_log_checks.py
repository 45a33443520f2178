"""Lightning's checks on what self.log accepts (issue 24, point 12): a name holding 'dataloader_idx_' (the suffix
the loop adds itself with several evaluation loaders) and logging from a hook whose values no row shows are
refused with MisconfigurationException (a ValueError), naming the key or the hook."""

from __future__ import annotations

import pytest

from tests.helpers.models import BoringModel, regression_loader
from trainer import Trainer
from trainer.loops.hooks import NO_LOG_HOOKS
from trainer.callbacks import Callback
from trainer.utils.exceptions import MisconfigurationException


def _fit(module, tmp_path, callbacks=None, val=False):
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=callbacks)
    trainer.fit(module, regression_loader(16, 8), regression_loader(8, 8) if val else None)
    return trainer


def test_a_logged_name_with_dataloader_idx_is_refused(tmp_path):
    class Reserved(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("acc/dataloader_idx_0", 1.0)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match=r"self\.log\('acc/dataloader_idx_0', \.\.\.\): "
                                                        r"'dataloader_idx_' is reserved"):
        _fit(Reserved(), tmp_path)


def test_several_eval_loaders_still_log_under_their_suffix(tmp_path):
    class Two(BoringModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.log("v", float(dataloader_idx))

    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path))
    out = trainer.validate(Two(), [regression_loader(8, 8), regression_loader(8, 8)])
    assert out == [{"v/dataloader_idx_0": 0.0}, {"v/dataloader_idx_1": 1.0}]


@pytest.mark.parametrize("hook", ["setup", "configure_optimizers", "on_fit_start", "on_fit_end", "on_train_end",
                                  "on_validation_end", "on_sanity_check_start", "on_save_checkpoint"])
def test_logging_from_a_hook_no_row_shows_is_refused_naming_it(tmp_path, hook):
    class Logs(BoringModel):
        pass

    def log_here(self, *args):
        self.log("x", 1.0)
        if hook == "configure_optimizers":
            return BoringModel.configure_optimizers(self)

    setattr(Logs, hook, log_here)
    with pytest.raises(MisconfigurationException, match=rf"self\.log\('x', \.\.\.\) inside {hook}: a value logged "
                                                        r"there is never shown"):
        trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=str(tmp_path))
        trainer.fit(Logs(), regression_loader(16, 8), regression_loader(8, 8))


def test_a_callback_logging_from_such_a_hook_is_refused_and_allowed_hooks_still_log(tmp_path):
    class Bad(Callback):
        def on_fit_start(self, trainer, module):
            self.log("cb", 1.0)

    with pytest.raises(MisconfigurationException, match=r"inside on_fit_start"):
        _fit(BoringModel(), tmp_path, callbacks=[Bad()])

    class Good(Callback):
        def on_train_epoch_end(self, trainer, module):
            self.log("cb", 2.0)

    class Starts(BoringModel):
        def on_train_start(self):
            self.log("start", 3.0)

    trainer = _fit(Starts(), tmp_path, callbacks=[Good()], val=True)
    assert trainer.callback_metrics["cb"] == 2.0 and trainer.callback_metrics["start"] == 3.0


def test_the_refused_hooks_are_hooks():
    from trainer.callbacks.base import HOOK_NAMES

    assert NO_LOG_HOOKS - set(HOOK_NAMES) == {"configure_optimizers"}
