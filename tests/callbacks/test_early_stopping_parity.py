"""EarlyStopping as a Lightning user expects it (issue 24): ``stopping_reason`` is an
``EarlyStoppingReason`` (importable from trainer.callbacks) with ``stopping_reason_message``,
both checkpointed; ``monitor="epoch"`` / ``"step"``; bad settings are MisconfigurationException."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.callbacks import EarlyStopping, EarlyStoppingReason
from trainer.callbacks.early_stopping import EarlyStoppingReason as FromModule
from trainer.utils.exceptions import MisconfigurationException
from tests.helpers import BoringModel, regression_loader


class Scores(BoringModel):
    """Logs ``score`` = scores[epoch] after each validation (the last value repeats)."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.log("score", self.scores[min(self.current_epoch, len(self.scores) - 1)])


def _fit(es: EarlyStopping, scores: list[float], make_trainer, max_epochs: int = 6):
    trainer = make_trainer(max_epochs=max_epochs, callbacks=[es], enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(Scores(scores), regression_loader(16, 8), regression_loader(8, 8))
    return trainer


@pytest.mark.parametrize("kwargs, scores, reason, stopped_epoch, words", [
    ({"patience": 2}, [5.0, 6.0, 7.0], EarlyStoppingReason.PATIENCE_EXHAUSTED, 2, "did not improve"),
    ({"stopping_threshold": 2.5}, [5.0, 4.0, 2.0], EarlyStoppingReason.STOPPING_THRESHOLD, 2, "stopping threshold"),
    ({"divergence_threshold": 8.0}, [5.0, 9.0], EarlyStoppingReason.DIVERGENCE_THRESHOLD, 1, "divergence threshold"),
    ({}, [5.0, math.nan], EarlyStoppingReason.NON_FINITE_METRIC, 1, "not finite"),
    ({"patience": 3}, [6.0, 5.0, 4.0, 3.0, 2.0, 1.0], EarlyStoppingReason.NOT_STOPPED, 0, None),
])
def test_stopping_reason_says_why_fit_stopped(kwargs, scores, reason, stopped_epoch, words, make_trainer):
    es = EarlyStopping("score", **kwargs)
    assert (es.stopping_reason, es.stopping_reason_message) == (EarlyStoppingReason.NOT_STOPPED, None)
    trainer = _fit(es, scores, make_trainer)
    assert (es.stopping_reason, es.stopped_epoch) == (reason, stopped_epoch)
    if words is None:
        assert es.stopping_reason_message is None and trainer.current_epoch == 6
    else:
        assert words in es.stopping_reason_message and (es.stopping_reason_message.startswith("score")
                                                          or es.stopping_reason_message.startswith(f"{words.capitalize()} "
                                                                                                    "reached: score"))
        assert trainer.current_epoch == stopped_epoch + 1


def test_the_reason_is_checkpointed_and_old_states_read_as_not_stopped():
    assert FromModule is EarlyStoppingReason
    assert [r.value for r in EarlyStoppingReason] == [0, 1, 2, 3, 4]  # Lightning's values: their checkpoints agree
    es = EarlyStopping("score")
    es.stopping_reason, es.stopping_reason_message = EarlyStoppingReason.DIVERGENCE_THRESHOLD, "went up"
    state = es.state_dict()
    assert state["stopping_reason"] == 2 and isinstance(state["stopping_reason"], int)  # loads weights_only
    fresh = EarlyStopping("score")
    fresh.load_state_dict(state)
    assert (fresh.stopping_reason, fresh.stopping_reason_message) == (EarlyStoppingReason.DIVERGENCE_THRESHOLD,
                                                                      "went up")
    old = EarlyStopping("score")
    old.load_state_dict({"wait_count": 1, "stopped_epoch": 4, "best_score": torch.tensor(0.5), "patience": 3})
    assert (old.stopping_reason, old.stopping_reason_message, old.stopped_epoch) == (
        EarlyStoppingReason.NOT_STOPPED, None, 4)


@pytest.mark.parametrize("monitor, mode, stop_after", [("epoch", "min", 2), ("step", "max", None)])
def test_monitor_epoch_or_step_reads_the_trainers_counters(monitor, mode, stop_after, make_trainer):
    es = EarlyStopping(monitor, mode=mode, patience=2)  # never logged: the counters are the values
    trainer = _fit(es, [1.0], make_trainer, max_epochs=5)
    if stop_after is None:  # the step grows every check: always an improvement in "max" mode
        assert es.stopping_reason is EarlyStoppingReason.NOT_STOPPED and trainer.current_epoch == 5
    else:  # epoch 0 is the best "min" value; epochs 1 and 2 do not improve on it
        assert es.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED and es.stopped_epoch == stop_after
        assert es.best_score == 0


def test_a_logged_metric_named_epoch_wins_over_the_counter(make_trainer):
    class LogsEpoch(Scores):
        def on_validation_epoch_end(self):
            if not self.trainer.sanity_checking:
                self.log("epoch", 10.0 - self.current_epoch)  # falls: never an improvement for "max"

    es = EarlyStopping("epoch", mode="max", patience=1)
    trainer = make_trainer(max_epochs=5, callbacks=[es], enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(LogsEpoch([0.0]), regression_loader(16, 8), regression_loader(8, 8))
    assert (es.stopped_epoch, es.best_score) == (1, 10.0)


@pytest.mark.parametrize("kwargs", [{"mode": "up"}, {"patience": -1}, {"patience": 1.5}])
def test_bad_settings_are_misconfiguration_and_value_errors(kwargs):
    with pytest.raises(MisconfigurationException, match=r"EarlyStopping\((mode|patience)="):
        EarlyStopping("score", **kwargs)
    with pytest.raises(ValueError):
        EarlyStopping("score", **kwargs)
