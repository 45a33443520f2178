"""``LearningRateFinder``: a learning-rate range test at the start of fit (``trainer.tuner.Tuner.lr_find`` runs it
alone), with its result ``LRFinderResult``: the rates, the smoothed losses, a suggestion and a picture."""

from __future__ import annotations

import os
from typing import Any, Iterator

import torch

from trainer.strategies.support import rank_zero_info, rank_zero_warn

from .base import Callback
from .tuning import Snapshot, TunerExit, attr_holders, quiet_logging, set_attr, train_steps
from .view import TrainerView


class LRFinderResult:
    """What ``lr_find`` measured: ``results`` = {"lr": [...], "loss": [...]} (the loss smoothed, as Lightning's),
    ``suggestion()``, ``plot()`` and the PNG it wrote (``png_path``)."""

    def __init__(self, mode: str, min_lr: float, max_lr: float, num_training: int) -> None:
        self.mode, self.lr_min, self.lr_max, self.num_training = mode, min_lr, max_lr, num_training
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self.png_path: str | None = None
        self._optimal_idx: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The rate at the steepest descent of the loss (ignoring the first ``skip_begin`` and last ``skip_end``
        points); None when fewer than two finite points remain."""
        lrs = torch.tensor(self.results["lr"][skip_begin:-skip_end], dtype=torch.float64)
        losses = torch.tensor(self.results["loss"][skip_begin:-skip_end], dtype=torch.float64)
        finite = torch.isfinite(losses)
        if int(finite.sum()) < 2:
            rank_zero_warn(f"lr_find: {int(finite.sum())} usable point(s) after skipping {skip_begin} at the start and "
                           f"{skip_end} at the end: no suggestion. Raise num_training or lower early_stop_threshold's "
                           "sensitivity (a larger value), or use a larger dataset.")
            self._optimal_idx = None
            return None
        gradients = torch.gradient(losses[finite], spacing=[lrs[finite]])[0]
        kept = torch.arange(len(self.results["lr"]))[skip_begin:-skip_end][finite]
        self._optimal_idx = int(kept[int(torch.argmin(gradients))])
        return self.results["lr"][self._optimal_idx]

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """The loss against the rate (log scale in exponential mode), with the suggestion marked."""
        import matplotlib

        if ax is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        figure, ax = (plt.subplots(figsize=(7, 4), dpi=100) if ax is None else (ax.figure, ax))
        ax.plot(self.results["lr"], self.results["loss"])
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        if suggest and self.suggestion() is not None:
            i = self._optimal_idx
            assert i is not None  # set by suggestion()
            ax.plot(self.results["lr"][i], self.results["loss"][i], markersize=10, marker="o", color="red")
        if show:
            plt.show()
        return figure

    def save_png(self, directory: str) -> str | None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            rank_zero_info("lr_find: no picture, matplotlib is not installed (pip install matplotlib).")
            return None
        import matplotlib.pyplot as plt

        os.makedirs(directory, exist_ok=True)
        figure = self.plot(suggest=True)
        self.png_path = os.path.join(directory, "lr_find.png")
        figure.savefig(self.png_path)
        plt.close(figure)
        return self.png_path


class LearningRateFinder(Callback):
    """A learning-rate range test at the start of fit: ``num_training_steps`` steps with the rate growing from
    ``min_lr`` to ``max_lr`` (``mode``: "exponential" or "linear"), stopped early once the smoothed loss exceeds
    ``early_stop_threshold`` x its best. The result is ``self.optimal_lr`` (an ``LRFinderResult``), a PNG
    (``lr_find.png`` in the run's log directory), and -- with ``update_attr`` -- the suggestion written to the
    module's ``lr``/``learning_rate`` (or ``attr_name``) with the optimizer rebuilt from it. The weights, the
    optimizer, the scaler and the RNG states are then as before the test.

    On several processes every step is a synced DDP step and the loss is the mean over processes.
    """

    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(self, min_lr: float = 1e-8, max_lr: float = 1.0, num_training_steps: int = 100,
                 mode: str = "exponential", early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                 attr_name: str = "") -> None:
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"LearningRateFinder(mode={mode!r}): expected one of {self.SUPPORTED_MODES}.")
        if not 0 < min_lr < max_lr:
            raise ValueError(f"LearningRateFinder(min_lr={min_lr}, max_lr={max_lr}): expected 0 < min_lr < max_lr.")
        if not isinstance(num_training_steps, int) or num_training_steps < 2:
            raise ValueError(f"LearningRateFinder(num_training_steps={num_training_steps!r}): expected an int >= 2.")
        self._min_lr, self._max_lr, self._num_training_steps = min_lr, max_lr, num_training_steps
        self._mode, self._early_stop_threshold = mode, early_stop_threshold
        self._update_attr, self._attr_name = update_attr, attr_name
        self.early_exit = False  # the Tuner sets it: end fit after the search (TunerExit)
        self.png_dir: str | None = None  # where the plot goes (the Tuner: the run's log dir); None: trainer.log_dir
        self.optimal_lr: LRFinderResult | None = None

    def _rate(self, i: int) -> float:
        t = i / (self._num_training_steps - 1)
        if self._mode == "linear":
            return self._min_lr + (self._max_lr - self._min_lr) * t
        return self._min_lr * (self._max_lr / self._min_lr) ** t

    def on_fit_start(self, trainer: TrainerView, module: Any) -> None:
        names = (self._attr_name,) if self._attr_name else ("lr", "learning_rate")
        holders = attr_holders(trainer, module, names) if self._update_attr else []
        if self._update_attr and not holders:
            raise AttributeError(f"LearningRateFinder(update_attr=True): {type(module).__name__} has no attribute "
                                 f"{' or '.join(map(repr, names))} (nor its hparams or the datamodule) to write the "
                                 "suggestion to. Add one and read it in configure_optimizers, pass attr_name=..., "
                                 "or update_attr=False.")
        self.optimal_lr = self.lr_find(trainer, module)
        lr = self.optimal_lr.suggestion()
        if trainer.is_global_zero:
            self.optimal_lr.save_png(self.png_dir or trainer.log_dir)
        if lr is not None and holders:
            set_attr(holders, lr)
            trainer.fit_loop.setup_optimizers(module)  # the optimizer takes the new rate from configure_optimizers
            rank_zero_info(f"LearningRateFinder: learning rate set to {lr:.3g}.")
        if self.early_exit:
            raise TunerExit()

    def lr_find(self, trainer: TrainerView, module: Any) -> LRFinderResult:
        result = LRFinderResult(self._mode, self._min_lr, self._max_lr, self._num_training_steps)
        snapshot = Snapshot(trainer, module)
        optimizer = trainer.optimizers[0]

        def set_rate(i: int) -> None:
            for group in optimizer.param_groups:
                group["lr"] = self._rate(i)

        average, best, beta = 0.0, float("inf"), 0.98
        quiet = quiet_logging(module)
        try:
            for i, loss in enumerate(train_steps(trainer, module, _cycle(trainer.train_dataloader),
                                                 self._num_training_steps, before_step=set_rate)):
                if trainer.world_size > 1:
                    loss = trainer.strategy.reduce(loss.float(), "mean")
                value = float(loss)  # the range test's one host sync per step
                average = beta * average + (1 - beta) * value
                smoothed = average / (1 - beta ** (i + 1))
                result.results["lr"].append(self._rate(i))
                result.results["loss"].append(smoothed)
                if self._early_stop_threshold is not None and i > 1 and smoothed > self._early_stop_threshold * best:
                    break
                best = min(best, smoothed)
        finally:
            quiet.__exit__(None, None, None)
            snapshot.restore(trainer, module)
        return result


def _cycle(loader: Any) -> Iterator[Any]:
    """The loader's batches, again and again (a range test may want more steps than an epoch has)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return
