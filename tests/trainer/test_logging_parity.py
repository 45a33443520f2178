"""Logging and the training loop as Lightning users rely on them (issue 24): a training metric a callback
monitors is current when it decides, values logged in on_train_start reach the loggers, logger rows sit on
Lightning's x axis (first step at 0, `epoch` in every row), and the loop's Lightning-compatible entry points."""

from __future__ import annotations

import csv
import os

import pytest
import torch

from tests.helpers.models import BoringModel, regression_loader
from trainer import Trainer, TrainModule
from trainer.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint, TensorBoardLogger


def _rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(logger.metrics_file, newline="") as f:
        return list(csv.DictReader(f))


class StepLosses(BoringModel):
    """Logs `train_loss` per step (Lightning's default in training_step) and remembers each value."""

    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.losses.append(loss.item())
        self.log("train_loss", loss)
        return loss


# -- point 1: a monitored training metric is current when a callback decides -------------------------------

class SeesAtValidationEnd(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.seen.append((trainer.global_step, float(trainer.callback_metrics["train_loss"])))


@pytest.mark.parametrize("batches, log_every", [(4, 50), (7, 3), (6, 3)])
def test_a_callback_at_validation_end_sees_the_last_steps_training_value(make_trainer, batches, log_every):
    seen = SeesAtValidationEnd()
    stopper = EarlyStopping(monitor="train_loss", patience=100)  # failed with MissingMetricError when log_every > batches
    trainer = make_trainer(max_epochs=2, log_every_n_steps=log_every, callbacks=[seen, stopper],
                           num_sanity_val_steps=0)
    model = StepLosses()
    trainer.fit(model, regression_loader(8 * batches, 8), regression_loader(16, 8))
    assert [step for step, _ in seen.seen] == [batches, 2 * batches]
    assert [value for _, value in seen.seen] == [pytest.approx(model.losses[batches - 1], rel=1e-6),
                                                 pytest.approx(model.losses[-1], rel=1e-6)]
    assert stopper.best_score == pytest.approx(min(v for _, v in seen.seen), rel=1e-6)


def test_model_checkpoint_ranks_by_the_training_value_of_the_step_it_saves(make_trainer, tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="train_loss", save_top_k=1,
                                 filename="{epoch}-{train_loss:.6f}")
    trainer = make_trainer(max_epochs=3, log_every_n_steps=50, callbacks=[checkpoint])
    model = StepLosses()
    trainer.fit(model, regression_loader(24, 8))  # 3 steps an epoch, no validation: saves at epoch ends
    epoch_ends = [model.losses[2], model.losses[5], model.losses[8]]
    best = min(range(3), key=lambda e: epoch_ends[e])
    assert checkpoint.best_model_score == pytest.approx(epoch_ends[best], rel=1e-6)
    assert os.path.basename(checkpoint.best_model_path) == f"epoch={best}-train_loss={epoch_ends[best]:.6f}.ckpt"


def test_reading_between_log_intervals_gives_each_steps_value_but_no_logger_row(make_trainer):
    class ReadsEveryStep(Callback):
        def __init__(self) -> None:
            self.values: list[float] = []
            self.logged: list[bool] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.values.append(trainer.callback_metrics["train_loss"])
            self.logged.append("train_loss" in trainer.logged_metrics)

    reader = ReadsEveryStep()
    logger = CSVLogger("logs", version=0)
    trainer = make_trainer(max_epochs=1, log_every_n_steps=4, callbacks=[reader], logger=logger)
    model = StepLosses()
    trainer.fit(model, regression_loader(64, 8))
    assert reader.values == [pytest.approx(v, rel=1e-6) for v in model.losses]
    # the first row is written after step 4's on_train_batch_end (as in Lightning)
    assert reader.logged == [False, False, False, False, True, True, True, True]
    assert [r["step"] for r in _rows(logger) if r["train_loss"]] == ["3", "7"]  # rows only at the intervals


def test_an_unread_run_keeps_its_values_on_the_device_until_the_interval(make_trainer):
    """Nobody reads callback_metrics: the loop itself resolves nothing between log intervals."""
    pending: list[bool] = []

    class Peeks(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            pending.append(module._results.has_pending())

    trainer = make_trainer(max_epochs=1, log_every_n_steps=4, callbacks=[Peeks()])
    trainer.fit(StepLosses(), regression_loader(64, 8))
    # read back after steps 4 and 8 only
    assert pending == [False, True, True, True, False, True, True, True]


def test_reading_callback_metrics_every_step_reads_nothing_back(make_trainer):
    """A callback reading callback_metrics at every step gets that step's value as the 0-d tensor it was
    logged as, and the read brings nothing back to the host: the values stay pending until the interval."""
    seen: list[tuple[bool, torch.Tensor]] = []

    class Reads(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            value = trainer.callback_metrics["train_loss"]
            seen.append((module._results.has_pending(), value))

    trainer = make_trainer(max_epochs=1, log_every_n_steps=4, callbacks=[Reads()])
    model = StepLosses()
    trainer.fit(model, regression_loader(64, 8))
    assert [pending for pending, _ in seen] == [True] * 8  # read before the loop's read-back at steps 4 and 8
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for _, v in seen)
    assert [float(v) for _, v in seen] == model.losses


# -- point 3: self.log in on_train_start -------------------------------------------------------------------

def test_a_value_logged_in_on_train_start_reaches_the_logger_once(make_trainer):
    class LogsAtStart(BoringModel):
        def on_train_start(self):
            self.log("start_value", 123.0)

    logger = CSVLogger("logs", version=0)
    trainer = make_trainer(max_epochs=2, log_every_n_steps=1, logger=logger)
    trainer.fit(LogsAtStart(), regression_loader(16, 8))
    rows = [r for r in _rows(logger) if r["start_value"]]
    assert [(r["step"], r["epoch"], float(r["start_value"])) for r in rows] == [("1", "0", 123.0)]
    assert trainer.logged_metrics["start_value"] == 123.0


def test_epoch_level_hooks_default_to_epoch_values(make_trainer):
    class Counts(Callback):
        def on_train_epoch_start(self, trainer, module):
            module.log("epoch_start", float(trainer.current_epoch))

    trainer = make_trainer(max_epochs=2, log_every_n_steps=1, callbacks=[Counts()])
    trainer.fit(BoringModel(), regression_loader(16, 8))
    assert trainer.callback_metrics["epoch_start"] == 1.0
    assert "epoch_start_step" not in trainer.callback_metrics


# -- point 14: rows on Lightning's x axis ------------------------------------------------------------------

class Foo(BoringModel):
    def training_step(self, batch, batch_idx):
        self.log("foo", float(batch_idx), on_step=True, on_epoch=True)
        return super().training_step(batch, batch_idx)


def test_tensorboard_rows_start_at_step_zero_and_carry_the_epoch(make_trainer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger("tb", version=0)
    trainer = make_trainer(max_epochs=2, log_every_n_steps=1, logger=logger)
    trainer.fit(Foo(), regression_loader(16, 8))  # 2 steps an epoch
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars["foo_step"] == [(0, 0.0), (1, 1.0), (2, 0.0), (3, 1.0)]
    assert scalars["foo_epoch"] == [(1, 0.5), (3, 0.5)]
    # one `epoch` point per row: four step rows and two epoch rows
    assert sorted(scalars["epoch"]) == [(0, 0.0), (1, 0.0), (1, 0.0), (2, 1.0), (3, 1.0), (3, 1.0)]
    assert "epoch" not in trainer.logged_metrics


def test_manual_optimization_rows_count_batches_not_optimizer_steps(make_trainer):
    class TwoOptimizers(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.other = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            for opt, layer in zip(self.optimizers(), (self.layer, self.other)):
                loss = torch.nn.functional.mse_loss(layer(x), y)
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            self.log("loss", loss)

        def configure_optimizers(self):
            return [torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.SGD(self.other.parameters(), lr=0.1)]

    logger = CSVLogger("logs", version=0)
    trainer = make_trainer(max_epochs=1, log_every_n_steps=2, logger=logger)
    trainer.fit(TwoOptimizers(), regression_loader(48, 8))  # 6 batches, 12 optimizer steps
    assert trainer.global_step == 12
    assert [r["step"] for r in _rows(logger) if r["loss"]] == ["1", "3", "5"]  # after batches 2, 4, 6


# -- point 10: Lightning entry points of the loop --------------------------------------------------------

class NoBatchIdx(BoringModel):
    """Steps without batch_idx (Lightning inspects the signature; its GAN example does this)."""

    def training_step(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def test_step(self, batch):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch):
        return self(batch[0])


def test_steps_without_batch_idx_are_called_with_the_batch_alone(make_trainer):
    trainer = make_trainer(max_epochs=1)
    model = NoBatchIdx()
    trainer.fit(model, regression_loader(16, 8), regression_loader(16, 8))
    assert trainer.global_step == 2 and "val_loss" in trainer.callback_metrics
    assert "test_loss" in trainer.test(model, regression_loader(16, 8))[0]
    assert [p.shape for p in trainer.predict(model, regression_loader(16, 8))] == [torch.Size([8, 1])] * 2


def test_validation_step_none_or_val_dataloader_none_switches_validation_off(make_trainer):
    class Counts(Callback):
        runs = 0

        def on_validation_start(self, trainer, module):
            Counts.runs += 1

    model = BoringModel()
    model.validation_step = None
    trainer = make_trainer(max_epochs=1, callbacks=[Counts()])
    trainer.fit(model, regression_loader(16, 8), regression_loader(16, 8))
    assert Counts.runs == 0 and trainer.global_step == 2

    class OwnLoaders(BoringModel):
        def train_dataloader(self):
            return regression_loader(16, 8)

        def val_dataloader(self):
            return regression_loader(16, 8)

    model = OwnLoaders()
    model.val_dataloader = None
    make_trainer(max_epochs=1, callbacks=[Counts()]).fit(model)
    assert Counts.runs == 0


def test_a_callback_logs_with_self_log(make_trainer):
    class Logs(Callback):
        def on_train_start(self, trainer, module):
            self.log("at_start", 1.0)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.log("per_batch", float(batch_idx))

        def on_train_epoch_end(self, trainer, module):
            self.log_dict({"at_end": 5.0})

    trainer = make_trainer(max_epochs=1, log_every_n_steps=1, callbacks=[Logs()])
    trainer.fit(BoringModel(), regression_loader(16, 8))
    metrics = trainer.callback_metrics
    assert (metrics["at_start"], metrics["per_batch"], metrics["at_end"]) == (1.0, 1.0, 5.0)
    with pytest.raises(RuntimeError, match=r"Logs.log\('x', ...\): this callback is not attached"):
        Logs().log("x", 1.0)


@pytest.mark.parametrize("spelling, expected", [("avg", 2.0), ("AVG", 2.0), ("SUM", 10.0), ("Max", 4.0), ("mean", 2.0)])
def test_reduce_fx_takes_lightnings_spellings(make_trainer, spelling, expected):
    class Reduces(BoringModel):
        def validation_step(self, batch, batch_idx):
            self.log("r", float(batch_idx), reduce_fx=spelling)

    result = make_trainer().validate(Reduces(), regression_loader(40, 8))  # batch_idx 0..4
    assert result == [{"r": expected}]


def test_logging_neither_on_step_nor_on_epoch_is_refused(make_trainer):
    class Neither(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("x", 1.0, on_step=False, on_epoch=False)
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match=r"self.log\('x', value, on_step=False, on_epoch=False\).*is not useful"):
        make_trainer(max_epochs=1).fit(Neither(), regression_loader(16, 8))


def test_on_gpu_and_the_core_import_path():
    from trainer.core import DataModule as CoreDataModule, TrainModule as CoreTrainModule
    from trainer.core.datamodule import DataModule as DM
    from trainer.core.module import TrainModule as TM
    from trainer import DataModule

    assert CoreTrainModule is TM is TrainModule and CoreDataModule is DM is DataModule
    assert BoringModel().on_gpu is False


# -- point 11: Lightning's DDP strategy strings -------------------------------------------------------------

@pytest.mark.parametrize("name, unused", [("ddp_spawn", False), ("ddp_find_unused_parameters_true", True),
                                          ("ddp_find_unused_parameters_false", False), ("ddp_notebook", False)])
def test_lightnings_ddp_strategy_strings(name, unused):
    from trainer.strategies import DDPStrategy, resolve_strategy

    strategy = resolve_strategy(name, "cpu", 1)
    assert isinstance(strategy, DDPStrategy) and strategy.find_unused_parameters is unused


@pytest.mark.parametrize("name, method", [("ddp_spawn", "spawn"), ("ddp_notebook", "fork"), ("ddp_fork", "fork")])
def test_starting_ranks_from_inside_the_interpreter_is_ddp_with_a_start_method(name, method):
    from trainer.strategies import DDPStrategy, resolve_strategy

    strategy = resolve_strategy(name, "cpu", 2)  # the ranks start in trainer.fit (tests/strategies/test_ddp_spawn.py)
    assert isinstance(strategy, DDPStrategy) and strategy.start_method == method and strategy.needs_launch
    assert resolve_strategy("ddp", "cpu", 2).start_method == "popen"


def test_trainer_state_says_whether_the_last_stage_finished(make_trainer):
    class Fails(BoringModel):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    trainer = make_trainer(max_epochs=1)
    assert trainer.state.status == "initializing" and not trainer.state.finished
    trainer.fit(BoringModel(), regression_loader(16))
    assert trainer.state.status == "finished" and trainer.state.finished
    trainer = make_trainer(max_epochs=1)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Fails(), regression_loader(16))
    assert trainer.state.status == "interrupted" and not trainer.state.finished


# -- point 5: manual optimization steps its own ReduceLROnPlateau ---------------------------------------------

def test_manual_optimization_runs_a_plain_reduce_lr_on_plateau(make_trainer):
    class Manual(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            self.lr_schedulers().step(1.0)  # a metric that never improves

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)]

    trainer = make_trainer(max_epochs=1)
    trainer.fit(Manual(), regression_loader(24, 8))  # was refused: "ReduceLROnPlateau needs a metric"
    # 3 steps: the first sets the best, the next two each halve the rate
    assert trainer.fit_loop.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.025)


# -- point 13: on several processes the training data is shuffled, as Lightning's use_distributed_sampler ------

class Records(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        self.seen.append(index.tolist())
        self.log("train_loss", torch.nn.functional.mse_loss(self(x), y))
        return torch.nn.functional.mse_loss(self(x), y)


def _indexed(n=16):
    g = torch.Generator().manual_seed(3)
    return torch.utils.data.TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g),
                                          torch.arange(n))


def _shuffle_worker(opt_out: bool):
    data = _indexed()
    if opt_out:  # Lightning's opt-out: the loader as given, with the user's own sharding sampler
        loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=torch.utils.data.DistributedSampler(
            data, num_replicas=2, rank=int(os.environ["RANK"]), shuffle=False))
    else:
        loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=False)
    model = Records()
    trainer = Trainer(max_epochs=2, accelerator="cpu", strategy="ddp", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, use_distributed_sampler=not opt_out)
    trainer.fit(model, loader)
    return {"seen": model.seen, "rank": trainer.global_rank,
            "saved": trainer.fit_loop.state_dict()["train_shuffle"]}


def _expected_shuffled(rank: int, world: int = 2, n: int = 16, seed: int = 0) -> list[list[int]]:
    """torch's DistributedSampler order: randperm seeded by seed + epoch, sample i to rank i % world."""
    batches = []
    for epoch in range(2):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()[rank::world]
        batches += [perm[i:i + 2] for i in range(0, len(perm), 2)]
    return batches


@pytest.mark.slow
def test_two_processes_shuffle_a_loader_built_without_shuffle_and_the_opt_out_keeps_it():
    from tests.helpers.distributed import run_distributed

    for result in run_distributed(_shuffle_worker, opt_out=False):
        assert result["seen"] == _expected_shuffled(result["rank"])
        assert result["saved"] is True  # what a resume onto another number of processes re-deals
    for result in run_distributed(_shuffle_worker, opt_out=True):
        in_order = list(range(result["rank"], 16, 2))
        assert result["seen"] == [in_order[i:i + 2] for i in range(0, 8, 2)] * 2
        assert result["saved"] is False


# -- point 1 on two processes: a callback deciding at validation end sees rank zero's training value ---------

def _monitor_worker():
    class Sees(Callback):
        values: list[float] = []

        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking:
                Sees.values.append(float(trainer.callback_metrics["train_loss"]))

    model = Records()
    stopper = EarlyStopping(monitor="train_loss", patience=1)
    trainer = Trainer(max_epochs=3, accelerator="cpu", strategy="ddp", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, log_every_n_steps=50, num_sanity_val_steps=0,
                      callbacks=[Sees(), stopper])
    data = _indexed()
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=2),
                torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.tensors[0], data.tensors[1]),
                                            batch_size=4))
    return {"values": Sees.values, "epoch": trainer.current_epoch, "wait": stopper.wait_count}


@pytest.mark.slow
def test_two_processes_decide_at_validation_end_on_rank_zeros_current_training_value():
    from tests.helpers.distributed import run_distributed

    ranks = run_distributed(_monitor_worker)
    assert ranks[0] == ranks[1]  # the same values, hence the same decisions, on both ranks
    assert len(ranks[0]["values"]) == ranks[0]["epoch"] and ranks[0]["values"]


# -- point 16: several processes on one machine share its CPUs (as Lightning's DDP) -----------------------------

@pytest.mark.parametrize("preset", [None, "3"])
def test_several_processes_on_one_machine_take_their_share_of_the_cpus(preset):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if preset is not None:
        env["OMP_NUM_THREADS"] = preset
    code = ("import os, torch; from trainer.strategies.process_group import share_cpu_threads; "
            "before = torch.get_num_threads(); share_cpu_threads(2); "
            "print(before, torch.get_num_threads(), os.environ['OMP_NUM_THREADS'], len(os.sched_getaffinity(0)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    before, after, variable, cpus = out.stdout.split()
    if preset is None:  # each of the 2 processes: half the CPUs, at least one thread
        assert int(after) == max(1, int(cpus) // 2) and variable == after
    else:  # the user's setting wins
        assert (after, variable) == (before, "3")


# -- the progress bar's Lightning hooks ------------------------------------------------------------------------

def test_progress_bar_get_metrics_is_what_it_shows_and_it_knows_its_trainer(capsys):
    from trainer.callbacks import ProgressBar

    class Renamed(ProgressBar):
        def get_metrics(self, trainer, module):
            assert self.trainer is trainer
            return {f"my_{k}": v for k, v in super().get_metrics(trainer, module).items()}

    class Shown(BoringModel):
        def training_step(self, batch, batch_idx):
            self.log("shown", 2.0, prog_bar=True)
            return super().training_step(batch, batch_idx)

    trainer = Trainer(max_epochs=1, logger=False, accelerator="cpu", enable_model_summary=False,
                      enable_checkpointing=False, precision="32-true", callbacks=[Renamed()])
    trainer.fit(Shown(), regression_loader(16, 8))
    assert "epoch 0: global_step 2, my_shown=2" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        ProgressBar().trainer


def test_a_checkpoints_train_shuffle_must_be_a_bool(make_trainer, tmp_path):
    from trainer.persistence.layout import MalformedCheckpointError, check_layout

    trainer = make_trainer(max_steps=2, enable_checkpointing=False)
    trainer.fit(BoringModel(), regression_loader(32, 4))
    content = trainer.dump_checkpoint()
    assert content["loops"]["train_shuffle"] is None  # one process: no distributed sampler
    check_layout(content, "good.ckpt")
    content["loops"]["train_shuffle"] = "yes"
    with pytest.raises(MalformedCheckpointError, match=r"loops\.train_shuffle"):
        check_layout(content, "edited.ckpt")


def test_no_logger_writer_thread_outlives_the_stage(make_trainer):
    """A stage's end stops its loggers' writer threads (Lightning's own test suite fails any test that leaves
    a thread behind; an idle writer used to live on for its idle second)."""
    import threading

    trainer = make_trainer(max_epochs=1, log_every_n_steps=1, logger=CSVLogger("logs"))
    trainer.fit(StepLosses(), regression_loader(16, 8))
    assert not [t.name for t in threading.enumerate() if t.name.endswith("-writer") and t.is_alive()]
    trainer.test(StepLosses(), regression_loader(16, 8))
    assert not [t.name for t in threading.enumerate() if t.name.endswith("-writer") and t.is_alive()]
