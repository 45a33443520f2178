"""Part of the Trainer: where a stage's dataloaders come from (DataMixin), and the checks and helpers
behind Lightning's Trainer arguments and callbacks (module callbacks, plugins, barebones,
sync_batchnorm, the validate/test results table)."""

from __future__ import annotations

import math
from typing import Any

import torch

from trainer.callbacks.base import Callback
from trainer.callbacks.model_checkpoint import ModelCheckpoint
from trainer.datamodule import loaders_from
from trainer.module import TrainModule
from trainer.seed import install_worker_seeding
from trainer._logging import rank_zero_info


class DataMixin:
    """Part of ``Trainer`` (which owns every attribute used here)."""

    config: Any
    state: Any
    module: Any
    datamodule: Any
    train_dataloader: Any
    val_dataloaders: list[Any]
    _given_loaders: dict[str, Any]
    _num_train_batches: Any

    def _stage_loaders(self, kind: str, given: Any) -> list[Any]:
        """The loaders of ``kind`` ("train", "validate", "test", "predict"): those passed to the call,
        else the datamodule's, else the module's; checked, split between processes, seeded."""
        value = given if given is not None else loaders_from(self.datamodule or self.module, kind)
        if value is None:
            return []
        stage = "fit" if kind in ("train", "validate") and self.state.stage in ("fit", "sanity_check") else kind
        name = {"train": "train_dataloaders", "validate": "val_dataloaders"}.get(kind, "dataloaders") \
            if stage == "fit" else "dataloaders"
        loaders = _check_loaders(value, stage, name, single=kind == "train")
        if kind == "validate" and self.config.limit_val_batches == 0:
            return []
        loaders = self._distribute(loaders, train=kind == "train")
        for loader in loaders:
            install_worker_seeding(loader)
        return loaders

    def _fit_train_loader(self) -> Any:
        if self.train_dataloader is None:
            self.train_dataloader = self._stage_loaders("train", self._given_loaders["train"])[0]
        return self.train_dataloader

    @property
    def estimated_stepping_batches(self) -> int | float:
        """How many optimizer steps fit will take (for a schedule's total, e.g. OneCycleLR's
        ``total_steps``): batches per epoch (this process's, after limits) / accumulation, rounded
        up, times max_epochs, capped by max_steps; inf when nothing bounds it. Usable in
        ``configure_optimizers`` (the training dataloader is asked for then, as in Lightning)."""
        cfg = self.config
        if self.state.stage != "fit":
            raise RuntimeError("trainer.estimated_stepping_batches is known during fit only (from "
                               "configure_optimizers on).")
        num_batches = self._num_batches(self._fit_train_loader(), cfg.limit_train_batches, "train")
        epochs = cfg.epochs_limit
        if num_batches is None or epochs == float("inf"):
            return cfg.max_steps if cfg.max_steps != -1 else float("inf")
        steps = math.ceil(num_batches / cfg.accumulate_grad_batches) * epochs
        return min(steps, cfg.max_steps) if cfg.max_steps != -1 else steps

    @property
    def num_val_batches(self) -> list[int | None]:
        """Batches per validation dataloader (after ``limit_val_batches``; None without a length)."""
        return [self._eval_limit("validate", loader) for loader in self.val_dataloaders]

    def _reload_dataloaders(self, train_loader: Any, val_loaders: list[Any]) -> Any:
        """``reload_dataloaders_every_n_epochs``: at the start of every n-th epoch ask the datamodule
        (or module) for its loaders again; returns the train loader (val_loaders replaced in place)."""
        n, epoch = self.config.reload_dataloaders_every_n_epochs, self.state.current_epoch
        if not n or epoch == 0 or epoch % n:
            return train_loader
        given = self._given_loaders
        self.train_dataloader = None
        train_loader = self._fit_train_loader()
        val_loaders[:] = self._stage_loaders("validate", given["validate"])
        self._num_train_batches = self._num_batches(train_loader, self.config.limit_train_batches, "train")
        return train_loader


def _check_loaders(value: Any, stage: str, name: str, single: bool = False) -> list[Any]:
    loaders = list(value) if isinstance(value, (list, tuple)) and not single else [value]
    if single and isinstance(value, (list, tuple)) and value and hasattr(value[0], "__iter__") \
            and not isinstance(value[0], torch.Tensor) and len(value) > 1 and all(hasattr(v, "__len__") for v in value) \
            and all(isinstance(v, torch.utils.data.DataLoader) for v in value):
        raise TypeError(f"trainer.{stage}({name}=[{len(value)} dataloaders]): training takes one dataloader. "
                        "Combine the datasets (torch.utils.data.ConcatDataset) into one loader.")
    for loader in loaders:
        if loader is None or not hasattr(loader, "__iter__") or isinstance(loader, (torch.Tensor, str, dict)):
            raise TypeError(f"trainer.{stage}({name}={loader!r:.80}): expected a torch DataLoader (or any "
                            "iterable of batches), or a list of them for evaluation.")
    if not loaders:
        raise ValueError(f"trainer.{stage}({name}=[]): the list of dataloaders is empty.")
    return loaders


def _callback_list(callbacks: Any) -> list[Callback]:
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        return [callbacks]
    try:
        items = list(callbacks)
    except TypeError:
        raise TypeError(f"Trainer(callbacks={callbacks!r}): expected a Callback or a list of them.") from None
    for cb in items:
        if isinstance(cb, type) and issubclass(cb, Callback):
            raise TypeError(f"Trainer(callbacks=[..., {cb.__name__}]): got the class {cb.__name__} itself; pass an "
                            f"instance, e.g. {cb.__name__}(...).")
        if not isinstance(cb, Callback):
            raise TypeError(f"Trainer(callbacks=[..., {cb!r}]): every callback must subclass callbacks.Callback; "
                            f"got {type(cb).__name__}.")
    return items


def _shown(results: list[dict[str, float]], verbose: bool) -> list[dict[str, float]]:
    """validate/test(verbose=True): the results as a table on rank zero (Lightning prints one too)."""
    if verbose and any(results):
        names = sorted({name for result in results for name in result})
        width = max(len(n) for n in names)
        lines = [f"{'metric':<{width}}  " + "  ".join(f"{f'dataloader {i}':>14}" for i in range(len(results)))]
        lines += [f"{name:<{width}}  " + "  ".join(f"{result[name]:>14.6g}" if name in result else f"{'':>14}"
                                                  for result in results) for name in names]
        rank_zero_info("\n".join(lines))
    return results


def _with_module_callbacks(callbacks: list[Callback], module: TrainModule) -> list[Callback]:
    """The Trainer's callbacks with the module's ``configure_callbacks()``: a module callback replaces the
    Trainer's of the same type; ModelCheckpoint callbacks go last (they see every other's state)."""
    extra = module.configure_callbacks()
    extra = [extra] if isinstance(extra, Callback) else list(extra or [])
    if not extra:
        return callbacks
    _callback_list(extra)  # the same checks as Trainer(callbacks=...)
    types = {type(cb) for cb in extra}
    merged = [cb for cb in callbacks if type(cb) not in types] + [cb for cb in extra if cb not in callbacks]
    return [cb for cb in merged if not isinstance(cb, ModelCheckpoint)] + \
        [cb for cb in merged if isinstance(cb, ModelCheckpoint)]


def _convert_sync_batchnorm(module: TrainModule, strategy: Any) -> None:
    """``sync_batchnorm=True``: BatchNorm layers become SyncBatchNorm when there are several processes.
    torch's SyncBatchNorm runs on GPUs only, so on CPU it is refused with the reason."""
    if strategy.world_size == 1:
        return  # nothing to synchronise with
    if strategy.root_device.type == "cpu":
        raise ValueError(f"Trainer(sync_batchnorm=True) with {strategy.world_size} CPU processes: torch's "
                         "SyncBatchNorm only runs on GPU/XPU devices. Drop sync_batchnorm (each process then "
                         "normalises over its own batch), or train on GPUs.")
    for name, child in module.named_children():
        setattr(module, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))


def _check_plugins(plugins: Any) -> None:
    """Lightning's ``plugins=`` carries precision, cluster environments and checkpoint IO; here each has
    its own place, so a non-empty value is refused with where it goes."""
    if plugins is None or plugins == []:
        return
    from trainer.strategies import Precision

    first = plugins[0] if isinstance(plugins, (list, tuple)) else plugins
    if isinstance(first, Precision) or "Precision" in type(first).__name__:
        where = "pass it as Trainer(precision=...) (a string such as 'bf16-mixed', or a Precision object)"
    elif "Environment" in type(first).__name__:
        where = ("the cluster environment is read from the launcher's variables (torchrun, SLURM); there is no "
                 "plugin to pass")
    elif "CheckpointIO" in type(first).__name__:
        where = "checkpoints are written by the strategy (atomically); a custom CheckpointIO is not supported"
    else:
        where = "precision goes to Trainer(precision=...), everything else to the strategy object"
    raise ValueError(f"Trainer(plugins={plugins!r:.80}): plugins are not supported: {where}.")


def _check_barebones(settings: dict[str, Any], logger: Any, callbacks: Any, profiler: Any = None) -> None:
    """``barebones=True`` with something it turns off is a contradiction (Lightning refuses it too)."""
    asked = [f"{name}=True" for name in ("enable_checkpointing", "enable_progress_bar", "enable_model_summary")
             if settings.get(name) is True]
    if logger not in (None, False):
        asked.append("logger=...")
    if profiler not in (None, False):
        asked.append(f"profiler={profiler!r}")
    if asked:
        raise ValueError(f"Trainer(barebones=True, {asked[0]}): barebones turns off logging, checkpointing and the "
                         f"progress bar. Drop {asked[0]}, or barebones.")
