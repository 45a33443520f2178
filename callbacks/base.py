"""The ``Callback`` base: every hook the loop fires, each a no-op until overridden.

Callbacks receive ``(trainer, module, ...)`` (called by keyword, the module may also be named as in
Lightning: ``pl_module=``). They see the trainer as a ``TrainerView``
(callbacks/view.py: ``global_step``, ``current_epoch``, ``callback_metrics``, ``should_stop``,
``is_global_zero``, ``loggers``...) and never import the loop.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from trainer.strategies.exceptions import MisconfigurationException
from .view import TrainerView


class MissingMetricError(KeyError, MisconfigurationException):
    """A monitored metric was never logged. The message lists the metrics that were. A
    ``KeyError`` and (as Lightning raises for it) a ``MisconfigurationException``."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Callback:
    """Base class for callbacks. Override only the hooks you need: hooks that are not
    overridden are never called (the dispatcher skips them)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _alias_hooks(cls)  # its hooks also take Lightning's keyword pl_module= (see _accepting_pl_module)

    @property
    def state_key(self) -> str:
        """Key under which this callback's ``state_dict`` is checkpointed."""
        return type(self).__qualname__

    # -- set-up and tear-down -------------------------------------------------------------
    def setup(self, trainer: TrainerView, module: Any, stage: str) -> None: ...
    def teardown(self, trainer: TrainerView, module: Any, stage: str) -> None: ...
    def on_fit_start(self, trainer: TrainerView, module: Any) -> None: ...
    def on_fit_end(self, trainer: TrainerView, module: Any) -> None: ...
    def on_exception(self, trainer: TrainerView, module: Any, exception: BaseException) -> None: ...

    # -- training -----------------------------------------------------------------------
    def on_sanity_check_start(self, trainer: TrainerView, module: Any) -> None: ...
    def on_sanity_check_end(self, trainer: TrainerView, module: Any) -> None: ...
    def on_train_start(self, trainer: TrainerView, module: Any) -> None: ...
    def on_train_end(self, trainer: TrainerView, module: Any) -> None: ...
    def on_train_epoch_start(self, trainer: TrainerView, module: Any) -> None: ...
    def on_train_epoch_end(self, trainer: TrainerView, module: Any) -> None: ...
    def on_train_batch_start(self, trainer: TrainerView, module: Any, batch: Any, batch_idx: int) -> None: ...
    def on_train_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_before_backward(self, trainer: TrainerView, module: Any, loss: Any) -> None: ...
    def on_after_backward(self, trainer: TrainerView, module: Any) -> None: ...
    def on_before_optimizer_step(self, trainer: TrainerView, module: Any, optimizer: Any) -> None: ...
    def on_before_zero_grad(self, trainer: TrainerView, module: Any, optimizer: Any) -> None: ...

    # -- evaluation -----------------------------------------------------------------------
    def on_validation_start(self, trainer: TrainerView, module: Any) -> None: ...
    def on_validation_end(self, trainer: TrainerView, module: Any) -> None: ...
    def on_validation_epoch_start(self, trainer: TrainerView, module: Any) -> None: ...
    def on_validation_epoch_end(self, trainer: TrainerView, module: Any) -> None: ...
    def on_validation_batch_start(self, trainer: TrainerView, module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None: ...
    def on_test_start(self, trainer: TrainerView, module: Any) -> None: ...
    def on_test_end(self, trainer: TrainerView, module: Any) -> None: ...
    def on_test_epoch_start(self, trainer: TrainerView, module: Any) -> None: ...
    def on_test_epoch_end(self, trainer: TrainerView, module: Any) -> None: ...
    def on_test_batch_start(self, trainer: TrainerView, module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None: ...
    def on_predict_start(self, trainer: TrainerView, module: Any) -> None: ...
    def on_predict_end(self, trainer: TrainerView, module: Any) -> None: ...
    def on_predict_epoch_start(self, trainer: TrainerView, module: Any) -> None: ...
    def on_predict_epoch_end(self, trainer: TrainerView, module: Any) -> None: ...
    def on_predict_batch_start(self, trainer: TrainerView, module: Any, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, trainer: TrainerView, module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None: ...

    # -- checkpointing ----------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: TrainerView, module: Any, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, trainer: TrainerView, module: Any, checkpoint: dict[str, Any]) -> None: ...

    # -- logging (Lightning lets a callback call self.log: its module's, attached when a stage starts) ----
    _logging_module: Any = None

    def attach_module(self, module: Any) -> None:
        """The module whose ``self.log`` this callback's ``log`` goes through (None: none). The hook
        dispatcher attaches the running module when a stage starts."""
        self._logging_module = module

    def log(self, name: str, value: Any, **kwargs: Any) -> None:
        """``module.log(name, value, **kwargs)`` of the module being trained/evaluated (same arguments and
        defaults for the hook it is called from)."""
        if self._logging_module is None:
            raise RuntimeError(f"{type(self).__name__}.log({name!r}, ...): this callback is not attached to a running "
                               "trainer.fit/validate/test; call it from a hook while a stage runs.")
        self._logging_module.log(name, value, **kwargs)

    def log_dict(self, metrics: dict[str, Any], **kwargs: Any) -> None:
        """``self.log`` for each item; keyword arguments apply to all."""
        for name, value in metrics.items():
            self.log(name, value, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


HOOK_NAMES = tuple(name for name, value in vars(Callback).items()
                   if callable(value) and (name.startswith("on_") or name in ("setup", "teardown")))


def _accepting_pl_module(name: str, hook: Any) -> Any:
    """``hook`` (whose second parameter is ``module``) also called by keyword as Lightning's callbacks are:
    ``setup(trainer, pl_module=model, stage="fit")``. Other callers are unchanged."""
    try:
        params = list(inspect.signature(hook).parameters)
    except (TypeError, ValueError):
        return hook
    if params[1:3] != ["trainer", "module"] or "pl_module" in params or getattr(hook, "_takes_pl_module", False):
        return hook

    @functools.wraps(hook)
    def accepting(self: Any, *args: Any, **kwargs: Any) -> Any:
        if "pl_module" in kwargs:
            if "module" in kwargs or len(args) > 1:
                raise TypeError(f"{type(self).__name__}.{name}() got the module twice (pl_module= and module or a "
                                "second positional argument); pass it once: (trainer, pl_module) or (trainer, module).")
            kwargs["module"] = kwargs.pop("pl_module")
        return hook(self, *args, **kwargs)

    accepting._takes_pl_module = True  # type: ignore[attr-defined]
    return accepting


def _alias_hooks(cls: type) -> None:
    for name in HOOK_NAMES:
        hook = cls.__dict__.get(name)
        if callable(hook):
            setattr(cls, name, _accepting_pl_module(name, hook))


_alias_hooks(Callback)
