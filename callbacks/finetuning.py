"""Fine-tuning: freeze parts of the module before fit, unfreeze them later as new parameter groups.

``BaseFinetuning`` holds the helpers (freeze, make_trainable, unfreeze_and_add_param_group) and the
bookkeeping: the groups added to a running optimizer are checkpointed by parameter name and re-added
before the optimizer's state is loaded on resume, so their learning rates and moments come back exactly.
``BackboneFinetuning`` is the usual schedule for a module with a ``backbone``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import torch
from torch.nn import Module
from torch.nn.modules.batchnorm import _BatchNorm

from trainer.strategies.support import rank_zero_info

from .base import Callback
from .view import TrainerView

log = logging.getLogger("trainer")

Modules = Module | Iterable[Any]


def multiplicative(epoch: int) -> float:
    """``BackboneFinetuning``'s default ``lambda_func``: the backbone's rate grows 1.5x per epoch."""
    return 1.5


class BaseFinetuning(Callback):
    """Subclass it and override ``freeze_before_training(module)`` (runs in ``setup``, before the optimizers
    exist, so ``configure_optimizers`` sees only the trainable parameters) and
    ``finetune_function(module, epoch, optimizer)`` (runs at each epoch's start, once per epoch even across
    a resume; it may call ``unfreeze_and_add_param_group``).

    Example:
        >>> class Unfreeze(BaseFinetuning):
        ...     def freeze_before_training(self, module):
        ...         self.freeze(module.backbone)
        ...     def finetune_function(self, module, epoch, optimizer):
        ...         if epoch == 2:
        ...             self.unfreeze_and_add_param_group(module.backbone, optimizer, lr=1e-3)
    """

    def __init__(self) -> None:
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        self._last_epoch = -1  # finetune_function ran for this epoch (a mid-epoch resume does not repeat it)
        self._synced: set[int] = set()  # ids of the parameters trainable when the strategy wrapped the module

    # -- helpers (Lightning's names) --------------------------------------------------------------
    @staticmethod
    def flatten_modules(modules: Modules) -> list[Module]:
        """The leaf modules (and parents holding parameters directly) of a module or nested iterables."""
        if isinstance(modules, torch.nn.ModuleDict):
            modules = modules.values()
        if isinstance(modules, Iterable) and not isinstance(modules, Module):
            found: list[Module] = []
            for m in modules:
                found.extend(BaseFinetuning.flatten_modules(m))
            return found
        if not isinstance(modules, Module):
            raise TypeError(f"Expected a torch.nn.Module or an iterable of them, got {type(modules).__name__}.")
        return [m for m in modules.modules() if not list(m.children()) or m._parameters]

    @staticmethod
    def filter_params(modules: Modules, train_bn: bool = True, requires_grad: bool = True) -> list[torch.nn.Parameter]:
        """The parameters of ``modules`` whose ``requires_grad`` is ``requires_grad`` (BatchNorm's skipped
        unless ``train_bn``)."""
        return [p for m in BaseFinetuning.flatten_modules(modules) if train_bn or not isinstance(m, _BatchNorm)
                for p in m.parameters(recurse=False) if p.requires_grad == requires_grad]

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        """Unfreeze every parameter of ``modules`` (BatchNorm layers track running stats again)."""
        for m in BaseFinetuning.flatten_modules(modules):
            if isinstance(m, _BatchNorm):
                m.track_running_stats = True
            for p in m.parameters(recurse=False):
                p.requires_grad = True

    @staticmethod
    def freeze_module(module: Module) -> None:
        """Freeze the module's own parameters (a BatchNorm stops tracking running stats)."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for p in module.parameters(recurse=False):
            p.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        """Freeze ``modules``; with ``train_bn`` their BatchNorm layers stay trainable."""
        for m in BaseFinetuning.flatten_modules(modules):
            if isinstance(m, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(m)
            else:
                BaseFinetuning.freeze_module(m)

    @staticmethod
    def filter_on_optimizer(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter]) -> list:
        """``params`` that are not already in ``optimizer`` (by identity)."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        out = [p for p in params if id(p) not in held]
        skipped = len(list(params)) - len(out) if isinstance(params, list) else 0
        if skipped:
            log.warning(f"{skipped} parameter(s) to unfreeze are already in the optimizer and were skipped. Build the "
                        "optimizer from the trainable parameters only: filter(lambda p: p.requires_grad, "
                        "self.parameters()).")
        return out

    @staticmethod
    def unfreeze_and_add_param_group(modules: Modules, optimizer: torch.optim.Optimizer, lr: float | None = None,
                                     initial_denom_lr: float = 10.0, train_bn: bool = True) -> None:
        """Unfreeze ``modules`` and add their parameters to ``optimizer`` as a new group, with ``lr``, or the
        first group's rate divided by ``initial_denom_lr`` when ``lr`` is None."""
        BaseFinetuning.make_trainable(modules)
        group_lr = optimizer.param_groups[0]["lr"] / initial_denom_lr if lr is None else float(lr)
        params = BaseFinetuning.filter_on_optimizer(optimizer, BaseFinetuning.filter_params(modules, train_bn))
        if params:
            optimizer.add_param_group({"params": params, "lr": group_lr})

    # -- to override ----------------------------------------------------------------------------
    def freeze_before_training(self, module: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must override freeze_before_training(module).")

    def finetune_function(self, module: Any, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        raise NotImplementedError(f"{type(self).__name__} must override finetune_function(module, epoch, optimizer).")

    # -- hooks ----------------------------------------------------------------------------------
    def setup(self, trainer: TrainerView, module: Any, stage: str) -> None:
        if stage != "fit":
            return
        trainer.strategy.refuse_unsupported("adding_param_groups", type(self).__name__,
                                            "Use strategy='ddp' or a single device, or remove the callback.")
        self.freeze_before_training(module)
        # what the strategy will wrap as trainable: DDP's reducer syncs only these, the rest is averaged here
        self._synced = {id(p) for p in module.parameters() if p.requires_grad}

    def on_train_epoch_start(self, trainer: TrainerView, module: Any) -> None:
        epoch = trainer.current_epoch
        if epoch <= self._last_epoch:
            return  # resumed inside an epoch whose unfreezing the checkpoint already holds
        self._last_epoch = epoch
        names = {p: n for n, p in module.named_parameters()}
        for idx, optimizer in enumerate(trainer.optimizers):
            before = len(optimizer.param_groups)
            self.finetune_function(module, epoch, optimizer)
            stored = self._internal_optimizer_metadata.setdefault(idx, [])
            new = optimizer.param_groups[len(stored) if stored else 0:]
            if not stored or len(optimizer.param_groups) != before:
                stored.extend({**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
                              for g in new)

    def on_before_optimizer_step(self, trainer: TrainerView, module: Any, optimizer: torch.optim.Optimizer) -> None:
        # parameters unfrozen after the strategy wrapped the module are outside DDP's reducer: average them here
        late = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in self._synced and p.requires_grad]
        if late:
            trainer.strategy.average_gradients(late)

    def on_load_checkpoint(self, trainer: TrainerView, module: Any, checkpoint: dict[str, Any]) -> None:
        """Re-add the checkpoint's unfrozen groups before the optimizer's state is loaded into them."""
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if not state:
            return
        params = dict(module.named_parameters())
        for idx, optimizer in enumerate(trainer.optimizers):
            for group in state["internal_optimizer_metadata"].get(idx, [])[len(optimizer.param_groups):]:
                for name in group["params"]:
                    params[name].requires_grad = True
                optimizer.add_param_group({**group, "params": [params[n] for n in group["params"]]})

    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata, "last_epoch": self._last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._internal_optimizer_metadata = {int(k): v for k, v in state_dict["internal_optimizer_metadata"].items()}
        self._last_epoch = state_dict.get("last_epoch", -1)


class BackboneFinetuning(BaseFinetuning):
    """Train the head with the backbone frozen, then from ``unfreeze_backbone_at_epoch`` train the backbone too,
    at its own rate: ``backbone_initial_lr`` (default: the head's rate x ``backbone_initial_ratio_lr``), then
    multiplied each epoch by ``lambda_func(epoch + 1)``, capped at the head's rate when ``should_align``.

    The module needs a ``backbone`` attribute (an ``nn.Module``), and ``configure_optimizers`` should build the
    optimizer from the trainable parameters only (``filter(lambda p: p.requires_grad, self.parameters())``).

    Args:
        unfreeze_backbone_at_epoch: the epoch (from 0) at which the backbone starts training.
        lambda_func: the per-epoch multiplier of the backbone's rate.
        backbone_initial_ratio_lr, backbone_initial_lr: the backbone's first rate (see above).
        should_align: never let the backbone's rate exceed the head's.
        initial_denom_lr: kept for Lightning's signature (used when no rate is given).
        train_bn: train the backbone's BatchNorm layers while it is frozen.
        verbose: log both rates at each epoch start.
        rounding: the decimals those logged rates are rounded to.
    """

    def __init__(self, unfreeze_backbone_at_epoch: int = 10, lambda_func: Callable[[int], float] = multiplicative,
                 backbone_initial_ratio_lr: float = 1e-1, backbone_initial_lr: float | None = None,
                 should_align: bool = True, initial_denom_lr: float = 10.0, train_bn: bool = True,
                 verbose: bool = False, rounding: int = 12) -> None:
        super().__init__()
        if not isinstance(unfreeze_backbone_at_epoch, int) or unfreeze_backbone_at_epoch < 0:
            raise ValueError(f"BackboneFinetuning(unfreeze_backbone_at_epoch={unfreeze_backbone_at_epoch!r}): "
                             "expected an epoch, an int >= 0.")
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: float | None = None

    def setup(self, trainer: TrainerView, module: Any, stage: str) -> None:
        if stage == "fit" and not isinstance(getattr(module, "backbone", None), Module):
            raise AttributeError(f"BackboneFinetuning: {type(module).__name__} has no `backbone` attribute that is a "
                                 "torch.nn.Module. Put the pretrained part in self.backbone, or subclass "
                                 "BaseFinetuning to freeze other modules.")
        super().setup(trainer, module, stage)

    def freeze_before_training(self, module: Any) -> None:
        self.freeze(module.backbone, train_bn=self.train_bn)

    def finetune_function(self, module: Any, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        current_lr = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            lr = self.backbone_initial_lr if self.backbone_initial_lr is not None \
                else current_lr * self.backbone_initial_ratio_lr
            self.previous_backbone_lr = lr
            self.unfreeze_and_add_param_group(module.backbone, optimizer, lr, initial_denom_lr=self.initial_denom_lr,
                                              train_bn=self.train_bn)
        elif epoch > self.unfreeze_backbone_at_epoch and self.previous_backbone_lr is not None:
            lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            lr = current_lr if self.should_align and lr > current_lr else lr
            optimizer.param_groups[-1]["lr"] = lr
            self.previous_backbone_lr = lr
        else:
            return
        if self.verbose:
            rank_zero_info(f"Current lr: {round(current_lr, self.rounding)}, "
                           f"Backbone lr: {round(self.previous_backbone_lr, self.rounding)}")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict["previous_backbone_lr"]
        super().load_state_dict(state_dict)
