"""Status lines go through the ``trainer`` logger: on stdout by default (as when they were printed),
silenced by the logger's level, shown by the application's own logging configuration once it has
one, and never on a rank other than zero."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from trainer.strategies import SingleDeviceStrategy
from trainer.strategies.support import RankZeroFilter, log, rank_zero_info
from tests.helpers.models import BoringModel, regression_loader


@pytest.fixture
def trainer_level():
    """Restore the ``trainer`` logger's level after the test."""
    saved = log.level
    yield
    log.setLevel(saved)


def _fit_with_status_lines(make_trainer, tmp_path, **kw):
    # ckpt_path="last" with no checkpoint yet says so; ModelSummary and the progress bar's
    # end-of-fit table are status lines too
    trainer = make_trainer(max_epochs=1, default_root_dir=str(tmp_path), precision="32-true",
                           enable_model_summary=True, **kw)
    trainer.fit(BoringModel(), regression_loader(), ckpt_path="last")
    return trainer


def test_status_lines_are_on_stdout_by_default(make_trainer, tmp_path, capsys, trainer_level):
    _fit_with_status_lines(make_trainer, tmp_path)
    out, err = capsys.readouterr()
    assert "no checkpoint found" in out and "Total params" in out, out
    assert err == ""


def test_the_trainer_loggers_level_silences_them(make_trainer, tmp_path, capsys, trainer_level):
    logging.getLogger("trainer").setLevel(logging.WARNING)
    _fit_with_status_lines(make_trainer, tmp_path)
    assert capsys.readouterr() == ("", "")


class RankOne(SingleDeviceStrategy):
    """One device, reporting itself as rank 1 of a larger job."""

    @property
    def global_rank(self) -> int:
        return 1


def test_rank_one_prints_nothing(make_trainer, tmp_path, capsys, monkeypatch, trainer_level):
    monkeypatch.setenv("RANK", "1")
    _fit_with_status_lines(make_trainer, tmp_path, strategy=RankOne("cpu"))
    rank_zero_info("a status line of rank 1")
    assert capsys.readouterr() == ("", "")


def test_the_logger_passes_rank_zero_and_records_meant_for_every_rank(monkeypatch):
    record = logging.LogRecord("trainer", logging.INFO, __file__, 1, "line", None, None)
    every = logging.LogRecord("trainer", logging.INFO, __file__, 1, "line", None, None)
    every.all_ranks = True
    monkeypatch.setenv("RANK", "1")
    assert not RankZeroFilter().filter(record) and RankZeroFilter().filter(every)
    monkeypatch.setenv("RANK", "0")
    assert RankZeroFilter().filter(record)


@pytest.mark.slow
def test_a_script_sees_them_on_stdout_until_it_configures_logging(tmp_path):
    """Outside pytest: the lines go to stdout as bare messages; after ``logging.basicConfig`` they go
    through the application's handler (stderr here, with its format), once, and not to stdout."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import logging, sys
        from trainer import Trainer
        from trainer.strategies.support import rank_zero_info
        rank_zero_info("first status line")
        logging.basicConfig(stream=sys.stderr, format="APP %(message)s", level=logging.INFO)
        rank_zero_info("second status line")
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "first status line\n"
    assert proc.stderr.splitlines() == ["APP second status line"]


def _two_process_worker(root):
    """One rank of a real 2-process gloo run; returns what it wrote to stdout and stderr."""
    import contextlib
    import io

    from tests.helpers.trainers import quiet_trainer

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        trainer = quiet_trainer(max_epochs=1, default_root_dir=root, enable_model_summary=True,
                                enable_progress_bar=True)  # not a terminal: one line per epoch, then a summary
        trainer.fit(BoringModel(), regression_loader(32, 4), ckpt_path="last")
    return {"rank": trainer.global_rank, "world_size": trainer.world_size, "out": out.getvalue(),
            "err": err.getvalue()}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_with_two_processes_only_rank_zero_shows_status_lines(tmp_path):
    from tests.helpers.distributed import run_distributed

    zero, one = run_distributed(_two_process_worker, root=str(tmp_path))
    assert (zero["rank"], one["rank"], one["world_size"]) == (0, 1, 2)
    for line in ("Using precision", "no checkpoint found", "Total params", "epoch 0: global_step", "Fit finished"):
        assert line in zero["out"], zero["out"]
    assert one["out"] == "" and one["err"] == ""
