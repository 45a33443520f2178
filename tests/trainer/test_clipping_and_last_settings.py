"""Settings that used to fail late are said when the Trainer is built.

``Trainer(gradient_clip_val=float("nan"))`` was accepted (nan passes a ``< 0`` test) and every
gradient became NaN, the NaN loss then blamed on the learning rate; an infinite or negative value
is as meaningless. ``ModelCheckpoint(save_weights_only=True, save_last=True)`` writes a last.ckpt
that ``fit(ckpt_path="last")`` refuses: that was said only at the restart.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from tests.helpers import BoringModel, regression_loader
from trainer.callbacks import ModelCheckpoint
from trainer.strategies.exceptions import MisconfigurationException


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0])
def test_a_gradient_clip_val_that_is_not_a_finite_number_at_least_zero_is_refused_at_construction(make_trainer, value):
    with pytest.raises(MisconfigurationException, match=rf"Trainer\(gradient_clip_val={value!r}\): expected a finite "
                                                         r"number >= 0, or None"):
        make_trainer(gradient_clip_val=value)
    for fine in (None, 0, 0.5, 2):
        assert make_trainer(gradient_clip_val=fine).gradient_clip_val == fine


def test_clip_gradients_in_manual_optimization_refuses_nan(make_trainer):
    class Manual(BoringModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = super().training_step(batch, batch_idx)
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=float("nan"))
            opt.step()

    with pytest.raises(ValueError, match=r"clip_gradients\(gradient_clip_val=nan\): expected a finite number >= 0"):
        make_trainer(max_epochs=1, enable_checkpointing=False).fit(Manual(), regression_loader(8, 8))


def test_a_weights_only_last_checkpoint_is_said_at_construction_and_refused_at_the_restart(make_trainer, tmp_path):
    from trainer.strategies.checkpoint_io import CheckpointError

    def callbacks(**kw):
        return [ModelCheckpoint(dirpath=str(tmp_path), save_last=True, **kw)]

    with pytest.warns(UserWarning, match=r"ModelCheckpoint\(save_weights_only=True, save_last=True\): last\.ckpt "
                                         r"will hold the weights only, so trainer\.fit\(\.\.\., ckpt_path='last'\) "
                                         r"cannot resume training from it"):
        trainer = make_trainer(max_epochs=1, callbacks=callbacks(save_weights_only=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a whole last.ckpt, or weights only without last: nothing to say
        make_trainer(max_epochs=1, callbacks=callbacks())
        make_trainer(max_epochs=1, callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "w"), save_weights_only=True)])
    trainer.fit(BoringModel(), regression_loader(16, 8), ckpt_path="last")  # nothing to resume yet: trains
    assert "optimizer_states" not in torch.load(tmp_path / "last.ckpt", weights_only=True)
    with pytest.warns(UserWarning, match="weights only"):
        again = make_trainer(max_epochs=2, callbacks=callbacks(save_weights_only=True))
    with pytest.raises(CheckpointError, match=r"holds weights only \(save_weights_only=True\): it cannot resume"):
        again.fit(BoringModel(), regression_loader(16, 8), ckpt_path="last")
