"""Publishing logged values: to ``callback_metrics`` and ``logged_metrics`` (0-d tensors, as Lightning's),
the progress bar (floats, as Lightning's) and the loggers (floats)."""

from __future__ import annotations

from typing import Any

import torch

from trainer.logs.results import Results
from trainer.logs.console import rank_zero_info


def as_metric_tensor(value: Any) -> torch.Tensor:
    """A published value as ``callback_metrics``/``logged_metrics`` hold it: a detached 0-d tensor. A
    tensor stays where it is (no read-back); a host number (our reductions run in float64 on the host)
    becomes a float64 CPU tensor."""
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(()) if value.dim() else value.detach()
    return torch.tensor(float(value), dtype=torch.float64)


def as_float(value: Any) -> float:
    """A published value as the progress bar and the loggers get it (one read-back for a device tensor)."""
    return float(value)


class CallbackMetrics(dict):
    """``trainer.callback_metrics``: a dict of 0-d tensors (as Lightning's) whose training values are
    current when read.

    ``self.log`` keeps step values on the device and the loop reads them back only every
    ``log_every_n_steps``; a reader between two read-backs (a callback deciding on ``train_loss`` at
    validation end, a scheduler, the user) would see old values or miss a metric. Every read first puts
    the latest step values logged since the last read-back in, as the detached tensors they were logged
    as: no transfer (whoever turns one into a number pays that one read-back), so a loop stays free of
    per-step host syncs whether or not something reads. The values resolved so are this process's own
    (no collective: a read on one rank alone must not hang); at log intervals, epoch ends and before each
    validation in fit, rank zero's are sent to all."""

    __slots__ = ("_resolve",)

    def __init__(self, resolve: Any = None) -> None:
        super().__init__()
        self._resolve = resolve

    def _current(self) -> None:
        if self._resolve is not None:
            self._resolve()

    def __getitem__(self, key: Any) -> Any:
        self._current()
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self._current()
        return super().__contains__(key)

    def __iter__(self) -> Any:
        self._current()
        return super().__iter__()

    def __len__(self) -> int:
        self._current()
        return super().__len__()

    def __eq__(self, other: Any) -> bool:
        self._current()
        return super().__eq__(other)

    def __ne__(self, other: Any) -> bool:
        return not self == other

    __hash__ = None

    def __repr__(self) -> str:
        self._current()
        return super().__repr__()

    def get(self, key: Any, default: Any = None) -> Any:
        self._current()
        return super().get(key, default)

    def keys(self) -> Any:
        self._current()
        return super().keys()

    def values(self) -> Any:
        self._current()
        return super().values()

    def items(self) -> Any:
        self._current()
        return super().items()

    def copy(self) -> dict:
        self._current()
        return dict(super().items())

    def __reduce__(self) -> Any:  # pickles (and deep-copies) as the plain dict it holds
        return (dict, (self.copy(),))


class MetricsPublisher:
    """Owns what ``self.log`` collects (one ``Results`` per stage kind, in ``results``) and turns it
    into the Trainer's metric dicts and the loggers' rows (rank zero only). It reads the Trainer's
    public surface only."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer
        self.results = {stage: Results(stage) for stage in ("train", "validate", "test")}
        self.callback_metrics: dict[str, torch.Tensor] = CallbackMetrics(self._resolve_pending)
        self.logged_metrics: dict[str, torch.Tensor] = {}
        self.progress_bar_metrics: dict[str, float] = {}
        self.history: list[tuple[int, dict[str, float]]] = []  # what the loggers received (rank zero)
        self._announced = False
        # the x of a validation's row inside fit, set by the fit loop around it (None: stepped_batches())
        self.eval_step: int | None = None

    def reset(self) -> None:
        """A new top-level stage (fit, validate, test, predict) starts with no metrics (as Lightning)."""
        self.callback_metrics.clear()
        self.logged_metrics.clear()
        self.progress_bar_metrics.clear()

    def _resolve_pending(self) -> None:
        """A read of ``callback_metrics``: the latest training step values logged since the last
        read-back become current, as the device tensors they are (this rank's own; no read-back, no
        logger row, no collective; the next flush still folds them into the epoch values)."""
        results = self.results["train"]
        if not results.has_pending():
            return
        values = results.pending_step_values()
        forks = results.plain_names()
        dict.update(self.callback_metrics, values)
        dict.update(self.callback_metrics, {forks[k]: v for k, v in values.items() if k in forks})

    def callback_metrics_state(self) -> dict[str, float]:
        """``callback_metrics`` for a checkpoint: plain floats (one read-back, at save time)."""
        return {k: as_float(v) for k, v in self.callback_metrics.items()}

    def load_callback_metrics(self, state: dict[str, Any]) -> None:
        """A checkpoint's ``callback_metrics`` (floats, or tensors in older files) put back as tensors."""
        dict.update(self.callback_metrics, {k: as_metric_tensor(v) for k, v in state.items()})

    def flush_train(self) -> None:
        """Read the training values back; raise on a non-finite loss (unless allowed)."""
        trainer = self._trainer
        bad = self.results["train"].flush()
        if bad is not None and trainer.config.stop_on_nonfinite_loss:
            step, batch_idx = bad
            raise FloatingPointError(
                f"training_step returned a non-finite loss at global_step {step}, batch_idx {batch_idx} "
                f"(epoch {trainer.current_epoch}); detected at global_step {trainer.global_step} (losses are "
                "checked when logged values are read back, every log_every_n_steps, to avoid a host sync per "
                "step). Lower the learning rate, clip gradients (gradient_clip_val=1.0) or use bf16-mixed "
                "instead of 16-mixed; pass Trainer(stop_on_nonfinite_loss=False) to keep training anyway.")

    def publish_train(self, epoch_end: bool, log: bool = True, broadcast: bool = True) -> None:
        """The training values logged so far become ``callback_metrics`` (and, with ``log``, a row
        for the loggers; ``log=False`` when a callback needs them between log intervals).
        ``broadcast=False``: this rank's values as they are (a lazy read, see ``CallbackMetrics``)."""
        trainer = self._trainer
        results = self.results["train"]
        self.flush_train()
        if epoch_end:
            # the latest step values become visible to callbacks; loggers keep their interval
            self._publish(results.step_metrics(trainer.accelerator.strategy), results, also_plain=True, log=False)
            values = results.epoch_metrics(trainer.accelerator.strategy)
            # at the step of the epoch's last step row, as in Lightning (its curves and ours line up)
            self._publish(values, results, also_plain=True, step=max(self.stepped_batches() - 1, 0))
        else:
            step_values = results.step_metrics(trainer.accelerator.strategy if broadcast else None)
            self._publish(step_values, results, also_plain=True, log=log, broadcast=broadcast,
                          step=max(self.stepped_batches() - 1, 0))

    def publish_late_epoch_values(self, published: dict[str, float]) -> None:
        """Values logged by callbacks in ``on_train_epoch_end``, after the epoch's values were published
        (``published``: each entry's weight then): theirs too, in a row of their own at the same step."""
        results = self.results["train"]
        self.flush_train()
        late = {name for name, entry in results.entries.items()
                if entry.metric is None and published.get(name) != entry.weight}
        values = {k: v for k, v in results.epoch_metrics(self._trainer.accelerator.strategy).items()
                  if k in late or results.plain_names().get(k) in late}
        self._publish(values, results, also_plain=True, step=max(self.stepped_batches() - 1, 0))

    def stepped_batches(self) -> int:
        """Lightning's x axis for logger rows: batches that ended with an optimizer step (one per
        batch in manual optimization, however many optimizers it steps). A training step's row is
        logged at this count minus one (the first at step 0), an evaluation's at the count -- but a
        validation inside fit at the row of the batch it follows when that batch stepped (Lightning validates
        before it counts the batch: ``eval_step``, set by the fit loop)."""
        trainer = self._trainer
        module = trainer.module
        if module is not None and not getattr(module, "automatic_optimization", True):
            return trainer.state.batches_seen
        return trainer.global_step

    def stage_results(self, stage: str) -> Results:
        """The ``Results`` that ``stage`` ("validate", "sanity_check", "test", "train") logs into."""
        return self.results["test" if stage == "test" else "train" if stage == "train" else "validate"]

    def publish_eval(self, stage: str, num_loaders: int) -> list[dict[str, float]]:
        trainer = self._trainer
        results = self.stage_results(stage)
        results.flush()
        # as in Lightning: the loggers get the last x_step too, but callbacks and the returned dicts see
        # only epoch values (x_epoch, and plain x for it) -- a single evaluation batch is no thing to monitor
        forks = results.plain_names()
        step_values = {k: v for k, v in results.step_metrics(trainer.accelerator.strategy).items() if k in forks}
        values = results.epoch_metrics(trainer.accelerator.strategy)
        values.update({forks[k]: v for k, v in values.items() if k in forks})
        if stage != "sanity_check":
            logged_steps = results.names("logger")
            self._publish(values, results, also_plain=False,
                          extra={k: v for k, v in step_values.items() if k in logged_steps}, step=self.eval_step)
        if num_loaders == 1:
            return [values]
        # each loader's dict: its own metrics, and those logged outside any loader (e.g. in an epoch-end hook)
        return [{k: v for k, v in values.items() if "/dataloader_idx_" not in k or k.endswith(f"/dataloader_idx_{i}")}
                for i in range(num_loaders)]

    def _publish(self, values: dict[str, float], results: Any, also_plain: bool,
                 extra: dict[str, float] | None = None, log: bool = True, broadcast: bool = True,
                 step: int | None = None) -> None:
        """``x_step``/``x_epoch`` values are also published under plain ``x`` for callbacks.

        With several processes, rank zero's values are sent to all, so callbacks decide alike
        everywhere (values logged with ``sync_dist=True`` are already equal on every rank)."""
        strategy = self._trainer.accelerator.strategy
        if broadcast and strategy.world_size > 1:
            values = strategy.broadcast(values)
        plain = {}
        if also_plain:
            forks = results.plain_names()
            plain = {forks[key]: value for key, value in values.items() if key in forks}
        dict.update(self.callback_metrics, {k: as_metric_tensor(v) for k, v in {**values, **plain}.items()})
        bar_names, log_names = results.names("prog_bar"), results.names("logger")
        self.progress_bar_metrics.update({k: as_float(v) for k, v in {**values, **plain}.items() if k in bar_names})
        row = {k: v for k, v in values.items() if k in log_names}
        if row and log:
            row.update(extra or {})
            self.log_row(row, step)

    def log_row(self, row: dict[str, float], step: int | None = None) -> None:
        """A row for the loggers at ``step`` (default: ``stepped_batches()``, an evaluation's x). As in
        Lightning every row also carries ``epoch`` (unless the row logs its own), which the loggers
        get but ``logged_metrics`` does not. ``logged_metrics`` holds tensors and the loggers get floats,
        as in Lightning."""
        trainer = self._trainer
        self.logged_metrics.update({k: as_metric_tensor(v) for k, v in row.items()})
        row = {k: as_float(v) for k, v in row.items()}
        if trainer.is_global_zero and trainer.loggers:
            step = self.stepped_batches() if step is None else step
            row = {**row, "epoch": row.get("epoch", trainer.current_epoch)}
            self.history.append((step, dict(row)))
            for logger in trainer.loggers:  # written on each logger's writer thread, never this one
                logger.enqueue_metrics(row, step)

    def log_hyperparams(self) -> None:
        trainer = self._trainer
        if trainer.is_global_zero and trainer.loggers:
            if not self._announced:
                self._announced = True
                where = ", ".join(f"{type(lg).__name__} in {lg.log_dir}" for lg in trainer.loggers)
                rank_zero_info(f"Logging to {where}")
            datamodule = dict(trainer.datamodule.hparams) if trainer.datamodule is not None else {}
            params = {**datamodule, **getattr(trainer.module, "hparams", {}), "trainer": trainer.config.to_dict()}
            for logger in trainer.loggers:
                logger.enqueue_hyperparams(params)

    def finalize(self, status: str) -> None:
        trainer = self._trainer
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.flush_writes()  # every queued row written (a writer's error raised here), then closed
                logger.finalize(status)
            if status == "success" and trainer.state.stage == "fit" and trainer.loggers:
                from trainer.logs.plots import write_loss_png

                path = write_loss_png(self.history, trainer.log_dir)
                if path is not None:
                    rank_zero_info(f"Loss curves: {path}")
