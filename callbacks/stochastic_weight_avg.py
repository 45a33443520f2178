"""``StochasticWeightAveraging``: Lightning's SWA -- from ``swa_epoch_start`` the weights at the start of each
epoch are averaged, the learning rate anneals to ``swa_lrs`` (``torch.optim.swa_utils.SWALR``), and at the end
the module takes the averaged weights (and, if it has BatchNorm layers, their statistics recomputed on the
training data)."""

from __future__ import annotations

from typing import Any, Callable, Literal, cast

import torch
from torch.optim.swa_utils import SWALR

from trainer.strategies.support import rank_zero_info

from .base import Callback
from .weight_averaging import detached_copy, refuse_sharded
from .view import TrainerView

_BatchNorm = torch.nn.modules.batchnorm._BatchNorm


class StochasticWeightAveraging(Callback):
    """Average the weights of the last epochs (Izmailov et al., 2018), with Lightning's schedule.

    Example:
        >>> Trainer(max_epochs=20, callbacks=[StochasticWeightAveraging(swa_lrs=1e-2)])  # doctest: +SKIP

    Args:
        swa_lrs: the SWA learning rate: one float for every parameter group, or a list with one per group.
        swa_epoch_start: an int counts epochs from 1 (averaging starts at the start of that epoch); a float in
            [0, 1] is a fraction of ``max_epochs`` (``int(fraction * max_epochs)``).
        annealing_epochs: epochs over which the rate anneals from the optimizer's to ``swa_lrs``.
        annealing_strategy: "cos" or "linear".
        avg_fn: ``avg_fn(averaged, current, num_averaged)`` (default: the equal-weighted running mean).
        device: where the averaged copy lives (default "cpu"; None: the module's device).
    """

    def __init__(self, swa_lrs: float | list[float], swa_epoch_start: int | float = 0.8, annealing_epochs: int = 10,
                 annealing_strategy: str = "cos", avg_fn: Callable[..., torch.Tensor] | None = None,
                 device: torch.device | str | None = torch.device("cpu")) -> None:
        fix = "Pass an int >= 1 (an epoch counted from 1) or a float in [0, 1] (a fraction of max_epochs)."
        if isinstance(swa_epoch_start, bool) or not isinstance(swa_epoch_start, (int, float)) \
                or (isinstance(swa_epoch_start, int) and swa_epoch_start < 1) \
                or (isinstance(swa_epoch_start, float) and not 0.0 <= swa_epoch_start <= 1.0):
            raise ValueError(f"StochasticWeightAveraging(swa_epoch_start={swa_epoch_start!r}): out of range. {fix}")
        rates = swa_lrs if isinstance(swa_lrs, list) else [swa_lrs]
        if not rates or not all(isinstance(r, float) and r > 0 for r in rates):
            raise ValueError(f"StochasticWeightAveraging(swa_lrs={swa_lrs!r}): expected a positive float, or a list of "
                             "positive floats (one per parameter group), e.g. swa_lrs=1e-2.")
        if annealing_strategy not in ("cos", "linear"):
            raise ValueError(f"StochasticWeightAveraging(annealing_strategy={annealing_strategy!r}): expected 'cos' "
                             "or 'linear'.")
        if avg_fn is not None and not callable(avg_fn):
            raise TypeError(f"StochasticWeightAveraging(avg_fn={avg_fn!r}): expected a function "
                            "avg_fn(averaged, current, num_averaged).")
        self._swa_epoch_start = swa_epoch_start
        self._swa_lrs = swa_lrs
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = cast(Literal["cos", "linear"], annealing_strategy)  # checked above
        self._avg_fn = avg_fn or self.avg_fn
        self._device = torch.device(device) if isinstance(device, str) else device
        self._average_model: torch.nn.Module | None = None
        self._swa_scheduler: SWALR | None = None
        self._max_epochs = -1
        self.n_averaged: torch.Tensor | None = None
        self._init_n_averaged = 0
        self._latest_update_epoch = -1
        self._pending_state: dict[str, Any] | None = None  # a checkpoint's state, applied once the copy exists

    @property
    def swa_start(self) -> int:
        """The first averaged epoch, from 0."""
        return max(self._swa_start_epoch - 1, 0)

    @property
    def swa_end(self) -> float:
        """The last averaged epoch, from 0 (inf without an epoch limit)."""
        return float("inf") if self._max_epochs == -1 else self._max_epochs - 1

    @staticmethod
    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        """The equal-weighted running mean."""
        return averaged + (current - averaged) / (num_averaged + 1)

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self, trainer: TrainerView, module: Any, stage: str) -> None:
        if stage != "fit":
            return
        refuse_sharded(self, trainer)
        self._average_model = detached_copy(module, trainer)

    def on_fit_start(self, trainer: TrainerView, module: Any) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"StochasticWeightAveraging with {len(trainer.optimizers)} optimizers: it anneals and "
                             "averages for exactly one. Return one optimizer from configure_optimizers.")
        if len(trainer.lr_scheduler_configs) > 1:
            raise ValueError(f"StochasticWeightAveraging with {len(trainer.lr_scheduler_configs)} schedulers: it "
                             "replaces the one scheduler with SWALR at swa_epoch_start. Return at most one.")
        self._max_epochs = -1 if trainer.max_epochs == -1 else trainer.config.epochs_limit
        start = self._swa_epoch_start
        if isinstance(start, float):
            if self._max_epochs == -1:
                raise ValueError(f"StochasticWeightAveraging(swa_epoch_start={start}) is a fraction of max_epochs, but "
                                 "Trainer(max_epochs=-1) has no end. Pass an int epoch (counted from 1).")
            start = int(self._max_epochs * start)
        self._swa_start_epoch = start
        self._has_batch_norm = any(isinstance(m, _BatchNorm) for m in module.modules())

    def _start_swa(self, trainer: TrainerView, module: Any) -> None:
        """Anneal towards ``swa_lrs``: SWALR replaces the module's scheduler (or is the only one)."""
        assert self._average_model is not None  # made in setup
        self._average_model = self._average_model.to(self._device or next(module.parameters()).device)
        optimizer = trainer.optimizers[0]
        rates = self._swa_lrs if isinstance(self._swa_lrs, list) else [self._swa_lrs] * len(optimizer.param_groups)
        if len(rates) != len(optimizer.param_groups):
            raise ValueError(f"StochasticWeightAveraging(swa_lrs={self._swa_lrs}): {len(rates)} rates for "
                             f"{len(optimizer.param_groups)} parameter groups. Pass one float, or one per group.")
        for rate, group in zip(rates, optimizer.param_groups):
            group["initial_lr"] = rate
        # the ignore below: SWALR takes one rate per parameter group too; torch types swa_lr as a float
        self._swa_scheduler = SWALR(optimizer, swa_lr=rates, anneal_epochs=self._annealing_epochs,  # type: ignore[arg-type]
                                    anneal_strategy=self._annealing_strategy,
                                    last_epoch=self._max_epochs if self._annealing_strategy == "cos" else -1)
        if trainer.lr_scheduler_configs:
            rank_zero_info(f"StochasticWeightAveraging: {type(trainer.lr_scheduler_configs[0].scheduler).__name__} "
                           "is replaced by SWALR.")
        trainer.fit_loop.replace_scheduler(self._swa_scheduler, "epoch")
        if self.n_averaged is None:
            self.n_averaged = torch.tensor(self._init_n_averaged, dtype=torch.long)

    # -- the schedule ----------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: TrainerView, module: Any) -> None:
        epoch = trainer.current_epoch
        if not self.swa_start <= epoch <= self.swa_end:
            return
        if self._swa_scheduler is None:
            self._start_swa(trainer, module)
        if epoch > self._latest_update_epoch:  # the weights this epoch starts from join the average
            self._update(module)
            self._latest_update_epoch = epoch

    def on_train_end(self, trainer: TrainerView, module: Any) -> None:
        if self._average_model is None or self._swa_scheduler is None:
            return
        if trainer.current_epoch - 1 == self.swa_end or self._max_epochs == -1:
            for average, current in zip(self._average_model.parameters(), module.parameters()):
                current.detach().copy_(average.to(current.device))
            if self._has_batch_norm:
                self._update_batch_norm(trainer, module)

    def _update(self, module: torch.nn.Module) -> None:
        n = self.n_averaged
        assert n is not None and self._average_model is not None  # made when SWA started
        for average, current in zip(self._average_model.parameters(), module.parameters()):
            avg, cur = average.detach(), current.detach().to(average.device)
            average.detach().copy_(cur if n == 0 else self._avg_fn(avg, cur, n.to(average.device)))
        n += 1

    @torch.no_grad()
    def _update_batch_norm(self, trainer: TrainerView, module: torch.nn.Module) -> None:
        """Recompute the BatchNorm statistics for the averaged weights: one pass over this process's training
        data (the forward of each batch's first element, as ``torch.optim.swa_utils.update_bn``), a cumulative
        mean (momentum None), then the mean over processes."""
        norms = [m for m in module.modules() if isinstance(m, _BatchNorm)]
        momenta = {m: m.momentum for m in norms}
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        was_training = module.training
        module.train()
        device = next(module.parameters()).device
        for batch in trainer.train_dataloader:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            module(x.to(device))
        module.train(was_training)
        for m in norms:
            m.momentum = momenta[m]
            if trainer.world_size > 1:
                for buffer in (m.running_mean, m.running_var):
                    if buffer is not None:  # None: track_running_stats=False, no statistics to average
                        buffer.copy_(trainer.strategy.reduce(buffer.clone(), "mean"))

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"n_averaged": 0 if self.n_averaged is None else int(self.n_averaged),
                "latest_update_epoch": self._latest_update_epoch,
                "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
                "average_model_state": None if self._average_model is None else self._average_model.state_dict()}

    def on_load_checkpoint(self, trainer: TrainerView, module: Any, checkpoint: dict[str, Any]) -> None:
        """Called before the optimizer and schedulers are restored: if SWA had started, SWALR takes the
        scheduler's place now, so the checkpoint's scheduler state lands in it."""
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state and state["scheduler_state"] is not None and trainer.optimizers:
            self.on_fit_start(trainer, module)
            self._init_n_averaged = state["n_averaged"]
            self._start_swa(trainer, module)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._init_n_averaged = state_dict["n_averaged"]
        if self.n_averaged is not None:
            self.n_averaged.fill_(state_dict["n_averaged"])
        self._latest_update_epoch = state_dict["latest_update_epoch"]
        if self._average_model is not None and state_dict["average_model_state"] is not None:
            self._average_model.load_state_dict(state_dict["average_model_state"])
