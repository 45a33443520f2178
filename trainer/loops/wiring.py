"""The Trainer's wiring: where a stage's dataloaders come from (DataSources), and the checks and helpers
behind Lightning's Trainer arguments and callbacks (module callbacks, plugins, barebones, num_nodes,
the module a stage is given, sync_batchnorm, the validate/test results table)."""

from __future__ import annotations

import math
from typing import Any

import torch

from trainer.callbacks.base import Callback
from trainer.callbacks.model_checkpoint import ModelCheckpoint
from trainer.strategies.exceptions import MisconfigurationException
from trainer.data.datamodule import loaders_from
from trainer.data.distributed_data import distribute_loader, in_order
from trainer.module import TrainModule
from trainer.data.seeding import install_worker_seeding
from trainer.logs.console import rank_zero_info


class DataSources:
    """Where a stage's dataloaders come from: those passed to the call, else the datamodule's, else
    the module's; checked, split between processes and seeded. Also how many batches each gives
    after the ``limit_*`` settings. Owned by the Trainer (``Trainer.train_dataloader``,
    ``val_dataloaders``, ``num_training_batches`` read it); it reads the Trainer's public surface."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.given: dict[str, Any] = {"train": None, "validate": None}  # what fit was called with
        self.train_loader: Any = None      # fit's training loader, once asked for
        self.val_loaders: list[Any] = []   # fit's validation loaders
        self.num_train_batches: int | None = None  # per epoch, after limit_train_batches (None: no length)

    def start_fit(self, train: Any, validate: Any) -> None:
        self.given = {"train": train, "validate": validate}
        self.train_loader = None  # asked for in fit (or earlier by estimated_stepping_batches)

    def stage_loaders(self, kind: str, given: Any) -> list[Any]:
        """The loaders of ``kind`` ("train", "validate", "test", "predict"): those passed to the call,
        else the datamodule's, else the module's; checked, split between processes, seeded."""
        trainer = self.trainer
        value = given if given is not None else loaders_from(trainer.datamodule or trainer.module, kind)
        if value is None:
            return []
        stage = "fit" if kind in ("train", "validate") and trainer.state.stage in ("fit", "sanity_check") else kind
        name = {"train": "train_dataloaders", "validate": "val_dataloaders"}.get(kind, "dataloaders") \
            if stage == "fit" else "dataloaders"
        loaders = _check_loaders(value, stage, name, single=kind == "train")
        if kind == "validate" and (trainer.config.limit_val_batches == 0
                                   or (stage == "fit" and getattr(trainer.module, "validation_step", None) is None)):
            return []  # `model.validation_step = None` switches fit's validation off, as in Lightning
        loaders = self._distribute(loaders, train=kind == "train")
        for loader in loaders:
            install_worker_seeding(loader)
        return loaders

    def fit_train_loader(self) -> Any:
        if self.train_loader is None:
            self.train_loader = self.stage_loaders("train", self.given["train"])[0]
        return self.train_loader

    def fit_val_loaders(self) -> list[Any]:
        self.val_loaders = self.stage_loaders("validate", self.given["validate"])
        return self.val_loaders

    def estimated_stepping_batches(self) -> int | float:
        cfg = self.trainer.config
        if self.trainer.state.stage != "fit":
            raise RuntimeError("trainer.estimated_stepping_batches is known during fit only (from "
                               "configure_optimizers on).")
        num_batches = self.num_batches(self.fit_train_loader(), cfg.limit_train_batches, "train")
        epochs = cfg.epochs_limit
        if num_batches is None or epochs == float("inf"):
            return cfg.max_steps if cfg.max_steps != -1 else float("inf")
        steps = math.ceil(num_batches / cfg.accumulate_grad_batches) * epochs
        return min(steps, cfg.max_steps) if cfg.max_steps != -1 else steps

    def count_train_batches(self, train_loader: Any) -> int | None:
        self.num_train_batches = self.num_batches(train_loader, self.trainer.config.limit_train_batches, "train")
        return self.num_train_batches

    def reload(self, train_loader: Any, val_loaders: list[Any]) -> Any:
        """``reload_dataloaders_every_n_epochs``: at the start of every n-th epoch ask the datamodule
        (or module) for its loaders again; returns the train loader (val_loaders replaced in place)."""
        trainer = self.trainer
        n, epoch = trainer.config.reload_dataloaders_every_n_epochs, trainer.state.current_epoch
        if not n or epoch == 0 or epoch % n:
            return train_loader
        self.train_loader = None
        train_loader = self.fit_train_loader()
        val_loaders[:] = self.stage_loaders("validate", self.given["validate"])
        self.count_train_batches(train_loader)
        return train_loader

    def num_batches(self, loader: Any, limit: int | float | None, what: str) -> int | None:
        """Batches per epoch after ``limit``; None when the loader has no length."""
        try:
            total = len(loader)
        except TypeError:
            if isinstance(limit, float) and limit < 1.0:
                raise MisconfigurationException(f"Trainer(limit_{what}_batches={limit}): a fraction needs a dataloader with a "
                                 "length; this one has none (an IterableDataset?). Pass an int.") from None
            return limit if isinstance(limit, int) else None
        if total == 0:
            raise MisconfigurationException(f"The {what} dataloader is empty (len 0). Check that its dataset is not empty and that "
                             "batch_size is not larger than the dataset with drop_last=True.")
        if limit is None:
            return total
        if isinstance(limit, int):
            return min(total, limit)
        if 0 < limit and int(total * limit) == 0:
            raise MisconfigurationException(f"Trainer(limit_{what}_batches={limit}): {limit} of the {total} batches of the {what} "
                             f"dataloader is less than one batch. Pass at least {1 / total:.3g}, or an int "
                             "number of batches.")
        return int(total * limit)

    def eval_limit(self, stage: str, loader: Any) -> int | None:
        """Batches ``stage`` ("validate", "sanity_check", "test", "predict") takes from ``loader``."""
        cfg = self.trainer.config
        if stage == "sanity_check":
            n, limit = cfg.num_sanity_val_steps, self.eval_limit("validate", loader)
            if n == -1 or limit is None:
                return limit if n == -1 else n
            return min(n, limit)
        limit = {"validate": cfg.limit_val_batches, "test": cfg.limit_test_batches,
                 "predict": cfg.limit_predict_batches}[stage]
        return self.num_batches(loader, limit, {"validate": "val"}.get(stage, stage))

    def _distribute(self, loaders: list[Any], train: bool) -> list[Any]:
        trainer = self.trainer
        strategy = trainer.strategy
        if train and trainer.config.overfit_batches:
            loaders = [in_order(loader, "overfit_batches") for loader in loaders]
        if not trainer.config.use_distributed_sampler:  # the user's loaders already give each rank its share
            return loaders
        # as Lightning's use_distributed_sampler=True: on several processes the training data is shuffled
        # (seeded, set_epoch each epoch) even from a loader built with shuffle=False
        return [distribute_loader(loader, strategy.world_size, strategy.global_rank, train, shuffle=True if train else None)
                for loader in loaders]


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
        raise MisconfigurationException(f"trainer.{stage}({name}=[]): the list of dataloaders is empty.")
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
        raise MisconfigurationException(f"Trainer(sync_batchnorm=True) with {strategy.world_size} CPU processes: torch's "
                         "SyncBatchNorm only runs on GPU/XPU devices. Drop sync_batchnorm (each process then "
                         "normalises over its own batch), or train on GPUs.")
    for name, child in module.named_children():
        setattr(module, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))


def _check_plugins(plugins: Any) -> Any:
    """Lightning's ``plugins=`` carries precision, cluster environments and checkpoint IO; here each has
    its own place, so a non-empty value is refused with where it goes -- except ``SLURMEnvironment``
    (its auto-requeue settings), which is returned (None when not given)."""
    if plugins is None or plugins == []:
        return None
    from trainer.strategies import Precision, SLURMEnvironment

    given = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if len(given) == 1 and isinstance(given[0], SLURMEnvironment):
        return given[0]
    first = next((p for p in given if not isinstance(p, SLURMEnvironment)), given[0])
    if isinstance(first, Precision) or "Precision" in type(first).__name__:
        where = "pass it as Trainer(precision=...) (a string such as 'bf16-mixed', or a Precision object)"
    elif "Environment" in type(first).__name__:
        where = ("the cluster environment is read from the launcher's variables (torchrun, SLURM); there is no "
                 "plugin to pass (only SLURMEnvironment(auto_requeue=...), alone)")
    elif "CheckpointIO" in type(first).__name__:
        where = "checkpoints are written by the strategy (atomically); a custom CheckpointIO is not supported"
    else:
        where = "precision goes to Trainer(precision=...), everything else to the strategy object"
    raise MisconfigurationException(f"Trainer(plugins={plugins!r:.80}): plugins are not supported: {where}.")


def _check_checkpointing(config: Any, callbacks: list[Callback]) -> None:
    """``enable_checkpointing=False`` (or barebones) with a ``ModelCheckpoint`` among the callbacks is a
    contradiction: Lightning refuses it, and silently saving (or not) would surprise either way.
    A last.ckpt that can only hold weights is said now, not at the restart that cannot use it."""
    given = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
    _warn_weights_only_last(given)
    if config.enable_checkpointing or not given:
        return
    why = "barebones=True (which turns checkpointing off)" if config.barebones else "enable_checkpointing=False"
    raise MisconfigurationException(
        f"Trainer({why}, callbacks=[..., {type(given[0]).__name__}(...)]): checkpointing is off, yet a checkpoint "
        f"callback was given. Drop the {type(given[0]).__name__} from callbacks, or "
        f"{'drop barebones=True' if config.barebones else 'turn checkpointing on (enable_checkpointing=True)'}.")


def _warn_weights_only_last(checkpoints: list[ModelCheckpoint]) -> None:
    """``ModelCheckpoint(save_weights_only=True, save_last=True)`` writes a last.ckpt that
    ``fit(ckpt_path="last")`` refuses (it holds no optimizer or loop state): a one-time warning at
    construction (rank zero), unless another ModelCheckpoint writes a whole last.ckpt."""
    import warnings

    from trainer.strategies.support import process_rank

    weights_only = [cb for cb in checkpoints if cb.save_last and cb.save_weights_only]
    if not weights_only or any(cb.save_last and not cb.save_weights_only for cb in checkpoints) or process_rank():
        return
    warnings.warn("ModelCheckpoint(save_weights_only=True, save_last=True): last.ckpt will hold the weights only, so "
                  "trainer.fit(..., ckpt_path='last') cannot resume training from it (a restart is refused: no "
                  "optimizer, scheduler or loop state). To resume after a crash, drop save_weights_only=True (last.ckpt "
                  "then holds the whole state); to keep weights only, start new fits from them with "
                  "model.load_state_dict(torch.load(path, weights_only=True)['state_dict']) instead of "
                  "ckpt_path='last'.",
                  UserWarning, stacklevel=4)


def _check_barebones(settings: dict[str, Any], logger: Any, callbacks: Any, profiler: Any = None) -> None:
    """``barebones=True`` with something it turns off is a contradiction (Lightning refuses it too)."""
    asked = [f"{name}=True" for name in ("enable_checkpointing", "enable_progress_bar", "enable_model_summary")
             if settings.get(name) is True]
    if logger not in (None, False):
        asked.append("logger=...")
    if profiler not in (None, False):
        asked.append(f"profiler={profiler!r}")
    if asked:
        raise MisconfigurationException(f"Trainer(barebones=True, {asked[0]}): barebones turns off logging, checkpointing and the "
                         f"progress bar. Drop {asked[0]}, or barebones.")


def _check_num_nodes(num_nodes: Any) -> None:
    """Machines come from the launcher's environment; ``num_nodes`` states what the code expects."""
    from trainer.strategies.environment import detect_environment

    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise MisconfigurationException(f"Trainer(num_nodes={num_nodes!r}): expected a positive int (how many machines).")
    if num_nodes == 1:
        return
    env = detect_environment()
    if not env.is_distributed:
        raise MisconfigurationException(f"Trainer(num_nodes={num_nodes}): this process was not started by a launcher, so there is only "
                         f"one machine. Start the script on each machine with `trainer launch --num-machines "
                         f"{num_nodes} --machine-rank <i> --main-process-ip <ip> train.py` (or srun under SLURM).")
    machines = env.world_size // max(env.local_world_size, 1)
    if machines != num_nodes:
        raise MisconfigurationException(f"Trainer(num_nodes={num_nodes}): the launcher started {env.world_size} processes, "
                         f"{env.local_world_size} per machine, i.e. {machines} machine(s). Make them agree (or drop "
                         "num_nodes: the environment decides).")


def _check_module(module: Any, stage: str) -> None:
    if not isinstance(module, TrainModule):
        raise TypeError(f"trainer.{stage}(model=...): expected a TrainModule, got {type(module).__name__}. "
                        "Subclass trainer.TrainModule (it is a torch.nn.Module) and implement training_step.")
