"""The bars on a terminal (issue 27, point 5): the validation bar shows its total, and the epoch bar
shows the batch it just finished before validation starts (it waited for tqdm's next redraw)."""

from __future__ import annotations

import re

from tests.helpers import BoringModel, regression_loader
from tests.helpers.trainers import LEAN
from trainer.callbacks import ProgressBar


def test_validation_bar_total_and_the_epoch_bar_complete_before_validation(make_trainer, capsys):
    trainer = make_trainer(max_epochs=1, callbacks=[ProgressBar(force=True)], enable_progress_bar=True, **LEAN)
    trainer.fit(BoringModel(), regression_loader(64), regression_loader(24))  # 8 training, 3 validation batches
    err = capsys.readouterr().err
    assert re.search(r"Validation: +\d+%\|[^|]*\| \d/3 ", err), err[-600:]  # tqdm without a total: "0it"
    first_validation = err.index("Validation")
    assert re.search(r"Epoch 0: 100%\|[^|]*\| 8/8", err[:first_validation]), err[:first_validation][-400:]
