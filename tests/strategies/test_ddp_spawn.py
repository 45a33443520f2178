"""Lightning's ddp_spawn / ddp_fork / ddp_notebook: trainer.fit in a plain interpreter (this pytest session) starts
two real gloo ranks itself (spawned, or forked), and the results come back to the caller's Trainer and module
(trainer/engine/spawn.py)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import numpy as np

import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers.distributed import trainer_order
from tests.helpers.models import BoringModel, RandomRegression
from trainer.callbacks import Callback, ModelCheckpoint
from tests.helpers.trainers import quiet_trainer

pytestmark = pytest.mark.slow

N, B, EPOCHS = 16, 2, 2  # 2 ranks x batch 2, 4 steps an epoch


class FailsOnRankOne(BoringModel):
    """Fails in rank 1's second training step."""

    def training_step(self, batch, batch_idx):
        if self.trainer.global_rank == 1 and batch_idx == 1:
            raise ValueError(f"bad batch {batch_idx} on this rank")
        return super().training_step(batch, batch_idx)


class RecordsDraws(Callback):
    """Each rank's first draws from python's, numpy's and torch's generators (plain attributes: they come back)."""

    def on_fit_start(self, trainer, module):
        self.draws = [random.random(), float(np.random.rand()), torch.rand(()).item()]


def _seed_the_caller():
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)


def _one_process_reference(tmp_path):
    data = RandomRegression(N)
    model = BoringModel()
    trainer = quiet_trainer(max_epochs=EPOCHS, default_root_dir=str(tmp_path / "one"), num_sanity_val_steps=0,
                            enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(data, batch_size=2 * B, sampler=trainer_order(data)))
    return model


@pytest.mark.parametrize("strategy", ["ddp_fork", "ddp_spawn"])
def test_fit_on_two_started_ranks_comes_back_equal_to_one_process_on_the_whole_batch(tmp_path, strategy, capsys):
    reference = _one_process_reference(tmp_path)
    model = BoringModel()
    untrained = model.layer.weight.detach().clone()
    checkpoint, draws = ModelCheckpoint(dirpath=str(tmp_path / "ckpts"), monitor="val/loss", save_last=True), \
        RecordsDraws()
    trainer = quiet_trainer(strategy=strategy, devices=2, max_epochs=EPOCHS, default_root_dir=str(tmp_path),
                            num_sanity_val_steps=0, enable_model_summary=False, callbacks=[checkpoint, draws])
    loader = DataLoader(RandomRegression(N), batch_size=B)
    _seed_the_caller()
    expected_draws = [random.random(), float(np.random.rand()), torch.rand(()).item()]
    _seed_the_caller()  # the ranks draw from the state the caller has at fit: a spawned one gets it pickled
    assert trainer.fit(model, loader, DataLoader(RandomRegression(8, seed=1), batch_size=4)) is None
    method = strategy.removeprefix("ddp_")
    assert f"Starting 2 processes ({method}) for trainer.fit()" in capsys.readouterr().out

    # the trained weights are in the caller's module: those of one process on the whole batch
    assert not torch.equal(model.layer.weight, untrained)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert (trainer.global_step, trainer.current_epoch) == (EPOCHS * N // (2 * B), EPOCHS)
    assert trainer.module is model and trainer.world_size == 1  # this process is no rank
    # metrics and the checkpoint callback's results as rank zero had them
    assert set(trainer.callback_metrics) >= {"train/loss", "val/loss"}
    assert isinstance(trainer.callback_metrics["val/loss"], torch.Tensor)  # a 0-d tensor, as Lightning's
    assert checkpoint.best_model_path.endswith(".ckpt") and os.path.isfile(checkpoint.best_model_path)
    assert len(checkpoint.best_k_models) == 1 and checkpoint.best_model_score == pytest.approx(
        checkpoint.best_k_models[checkpoint.best_model_path])
    assert float(checkpoint.best_model_score) <= trainer.callback_metrics["val/loss"]  # the better of 2 epochs
    assert os.path.basename(checkpoint.last_model_path) == "last.ckpt"
    assert trainer.state.stage == "idle" and trainer.state.finished  # Lightning's check after fit
    # the caller's random state, forked or pickled (python's own generator reseeds itself in a forked child)
    assert draws.draws[1:] == pytest.approx(expected_draws[1:])
    assert (draws.draws[0] == expected_draws[0]) is (strategy == "ddp_spawn")

    # validate starts the ranks again and returns rank zero's results
    val = DataLoader(RandomRegression(8, seed=1), batch_size=4)
    [metrics] = trainer.validate(model, val, verbose=False)
    x, y = RandomRegression(8, seed=1)[:]
    with torch.no_grad():
        # rank zero's value (logged without sync_dist): its share of the data, samples 0, 2, 4, 6
        expected = torch.nn.functional.mse_loss(reference.layer(x[::2]), y[::2]).item()
    assert metrics["val/loss"] == pytest.approx(expected, rel=1e-5)
    if strategy == "ddp_fork":  # predict's return comes back the same way (one more spawn costs ~5 s)
        predictions = trainer.predict(model, DataLoader(RandomRegression(8, seed=1), batch_size=4))
        assert all(isinstance(p, torch.Tensor) and p.shape == (4, 1) for p in predictions)


def test_an_error_on_a_started_rank_is_raised_in_the_caller_naming_the_rank(tmp_path):
    trainer = quiet_trainer(strategy="ddp_fork", devices=2, max_epochs=1, default_root_dir=str(tmp_path),
                            enable_checkpointing=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="bad batch 1 on this rank") as info:
        trainer.fit(FailsOnRankOne(), DataLoader(RandomRegression(N), batch_size=B))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "Raised on rank 1 of 2" in notes and "training_step" in notes


def test_ddp_spawn_spawns_and_ddp_fork_forks(monkeypatch):
    import multiprocessing

    from trainer.engine.spawn import choose_start_method

    assert (choose_start_method("spawn"), choose_start_method("fork")) == ("spawn", "fork")
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # as on Windows
    assert choose_start_method("spawn") == "spawn"
    with pytest.raises(RuntimeError, match=r"'ddp_fork' or 'ddp_notebook'.*by fork, which .* does not have.*"
                                           r"Use strategy='ddp_spawn'"):
        choose_start_method("fork")


def test_what_cannot_be_pickled_for_spawned_ranks_is_named_before_any_rank_starts(tmp_path, capsys):
    trainer = quiet_trainer(strategy="ddp_spawn", devices=2, max_epochs=1, default_root_dir=str(tmp_path),
                            enable_checkpointing=False, enable_model_summary=False)
    loader = DataLoader(RandomRegression(8), batch_size=2, collate_fn=lambda items: items)
    with pytest.raises(TypeError, match=r"ddp_spawn'\)\.fit\(\): train_dataloaders\.collate_fn \(function .*<lambda>\)"
                                        r".*cannot be sent to the spawned processes.*importable module.*'ddp_fork'"):
        trainer.fit(BoringModel(), loader)
    assert "Starting 2 processes" not in capsys.readouterr().out  # refused before any worker started

    class Local(BoringModel):  # a class defined inside a function: pickle cannot find it by name
        pass

    with pytest.raises(TypeError, match=r"\.validate\(\): model\.__class__ \(class .*<locals>\.Local\)"):
        trainer.validate(Local(), DataLoader(RandomRegression(8), batch_size=2))


def test_a_module_defined_in_an_interactive_main_is_refused_for_ddp_spawn_with_the_fix(tmp_path):
    """python -c (like a notebook or the REPL): a spawned process cannot import __main__'s classes; ddp_fork can."""
    code = textwrap.dedent(f"""
        from torch.utils.data import DataLoader
        from tests.helpers.models import BoringModel, RandomRegression
        from trainer import Trainer

        class Net(BoringModel):
            pass

        for strategy in ("ddp_spawn", "ddp_fork"):
            trainer = Trainer(strategy=strategy, devices=2, max_epochs=1, accelerator="cpu", logger=False,
                              enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                              default_root_dir={str(tmp_path)!r})
            try:
                trainer.fit(Net(), DataLoader(RandomRegression(8), batch_size=2))
                print(strategy, "trained", trainer.global_step)
            except TypeError as err:
                print(strategy, "refused:", err)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    refused = "ddp_spawn refused: Trainer(strategy='ddp_spawn').fit(): model.__class__ (class __main__.Net)"
    assert refused in done.stdout, done.stdout + done.stderr
    assert "Net is defined in __main__ of an interactive session" in done.stdout
    assert "ddp_fork trained 2" in done.stdout, done.stdout + done.stderr


def test_a_bad_start_method_is_refused():
    from trainer.strategies import DDPStrategy

    with pytest.raises(ValueError, match=r"start_method='forkserver'.*expected 'popen'.*'fork' or 'spawn'"):
        DDPStrategy(start_method="forkserver")


class LogsRankValues(BoringModel):
    def training_step(self, batch, batch_idx):
        rank = self.trainer.global_rank
        self.log("summed", 1.0 + rank, on_step=True, on_epoch=False, sync_dist=True, reduce_fx="sum")
        self.log("largest", float(batch_idx + rank), on_step=True, on_epoch=False, sync_dist=True, reduce_fx="max")
        self.log("averaged", float(batch_idx + rank), on_step=True, on_epoch=True, sync_dist=True)
        self.log("own", 1.0 + rank, on_step=True, on_epoch=False)  # no sync_dist: rank zero's
        return super().training_step(batch, batch_idx)


def test_a_step_value_logged_with_sync_dist_is_reduced_over_the_ranks(tmp_path):
    """Lightning reduces a sync_dist step value when logged; ours are reduced where the ranks publish together (log
    intervals, epoch ends), so callback_metrics at the end of fit holds the reduced last step values."""
    trainer = quiet_trainer(strategy="ddp_fork", devices=2, max_epochs=1, default_root_dir=str(tmp_path),
                            enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(LogsRankValues(), DataLoader(RandomRegression(12), batch_size=2))  # 3 steps: batch_idx 0, 1, 2
    metrics = trainer.callback_metrics
    assert metrics["summed"] == 1.0 + 2.0
    assert metrics["largest"] == 2 + 1
    assert metrics["averaged_step"] == (2 + 3) / 2
    assert metrics["averaged_epoch"] == (0 + 1 + 2 + 1 + 2 + 3) / 6
    assert metrics["own"] == 1.0


class CountsSaves(Callback):
    """On each rank, the calls of torch.save during fit (this process is a fork: the patch dies with it)."""

    def on_train_start(self, trainer, module):
        real, self.calls = torch.save, 0

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)
        torch.save = counted

    def on_train_end(self, trainer, module):
        if trainer.global_rank != 0 and self.calls:
            raise AssertionError(f"rank {trainer.global_rank} called torch.save {self.calls} times")


def test_only_rank_zero_calls_torch_save_for_checkpoints(tmp_path):
    counter = CountsSaves()
    trainer = quiet_trainer(strategy="ddp_fork", devices=2, max_epochs=2, default_root_dir=str(tmp_path),
                            enable_model_summary=False, callbacks=[counter, ModelCheckpoint(save_top_k=-1)])
    trainer.fit(BoringModel(), DataLoader(RandomRegression(8), batch_size=2))
    assert counter.calls == 2  # rank zero's: one checkpoint an epoch


def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    """A spawned rank runs the caller's script again before its own work; a fit at the top level would start
    ranks of its own there. The rank says why and the caller's error says how to guard the script."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        from torch.utils.data import DataLoader
        from tests.helpers.models import BoringModel, RandomRegression
        from trainer import Trainer

        trainer = Trainer(strategy="ddp_spawn", devices=2, max_epochs=1, accelerator="cpu", logger=False,
                          enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                          default_root_dir={str(tmp_path)!r})
        trainer.fit(BoringModel(), DataLoader(RandomRegression(8), batch_size=2))
        """))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": root})
    assert done.returncode != 0
    assert "fit() ran while a spawned rank was importing the script that started it" in done.stderr, done.stderr
    assert "training code at the script's top level belongs under `if __name__ == \"__main__\":`" in done.stderr


def test_a_class_a_spawned_rank_cannot_import_comes_back_as_its_error_with_the_fix(tmp_path, monkeypatch):
    """Pickled here by name, but its module exists only in this process: the rank's ModuleNotFoundError is raised
    in the caller with a note saying what happened and how to fix it."""
    import types

    made_here = types.ModuleType("made_in_this_process_only")
    exec("from tests.helpers.models import BoringModel\nclass Net(BoringModel):\n    pass\n", made_here.__dict__)
    made_here.Net.__module__ = made_here.__name__
    monkeypatch.setitem(sys.modules, made_here.__name__, made_here)
    trainer = quiet_trainer(strategy="ddp_spawn", devices=2, max_epochs=1, default_root_dir=str(tmp_path),
                            enable_checkpointing=False, enable_model_summary=False)
    with pytest.raises(ModuleNotFoundError, match="made_in_this_process_only") as info:
        trainer.fit(made_here.Net(), DataLoader(RandomRegression(8), batch_size=2))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "a spawned rank of Trainer(strategy='ddp_spawn') unpickled what the caller sent it" in notes
    assert "strategy='ddp_fork'" in notes and "Raised on rank" in notes
