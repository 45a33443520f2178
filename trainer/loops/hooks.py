"""Hook dispatch: the module's hook first, then each callback's, skipping hooks nobody overrides."""

from __future__ import annotations

import functools
from typing import Any, Callable

from trainer.callbacks.base import HOOK_NAMES, Callback
from trainer.module import TrainModule


class Hooks:
    """Calls ``hook(*args)`` on the module (without trainer/module arguments) and then on every
    callback that overrides it (with them). An error raised inside gets a note naming the
    callback, the hook and the step, and is re-raised as the same exception."""

    def __init__(self, trainer: Any, module: TrainModule, callbacks: list[Callback]) -> None:
        self._trainer = trainer
        self._module: dict[str, list[tuple[str, Callable]]] = {}
        self._callbacks: dict[str, list[tuple[str, Callable]]] = {}
        for cb in callbacks:
            cb.attach_module(module)  # Callback.log logs through the module (as Lightning attaches it)
        for name in HOOK_NAMES:
            self._module[name] = ([(f"{type(module).__name__} (the TrainModule)", getattr(module, name))]
                                  if _overrides(module, TrainModule, name) else [])
            self._callbacks[name] = [(f"callback {type(cb).__name__}", functools.partial(getattr(cb, name), trainer, module))
                                     for cb in callbacks if _overrides(cb, Callback, name)]
            if name in NO_LOG_HOOKS:  # only overriding hooks are wrapped: nothing added where none is
                for targets in (self._module[name], self._callbacks[name]):
                    targets[:] = [(owner, no_logging(module, name, fn)) for owner, fn in targets]

    def has(self, name: str) -> bool:
        return bool(self._module[name] or self._callbacks[name])

    def __call__(self, name: str, *args: Any) -> Any:
        """The module's hook, then the callbacks'. Returns the module's result if not None."""
        result = self.module(name, *args)
        self.callbacks(name, *args)
        return result

    def module(self, name: str, *args: Any) -> Any:
        return self._run(self._module[name], name, args)

    def callbacks(self, name: str, *args: Any) -> Any:
        return self._run(self._callbacks[name], name, args)

    def _run(self, targets: list[tuple[str, Callable]], name: str, args: tuple) -> Any:
        result = None
        for owner, fn in targets:
            try:
                out = fn(*args)
            except Exception as err:
                add_note(err, f"raised in {owner}.{name} at {where(self._trainer.state, _batch_idx_arg(name, args))}")
                raise
            result = out if out is not None else result
        return result


# Hooks whose logged values no step or epoch row would show (Lightning refuses self.log in them as well).
NO_LOG_HOOKS = frozenset({
    "setup", "teardown", "configure_optimizers", "on_fit_start", "on_fit_end", "on_sanity_check_start",
    "on_sanity_check_end", "on_train_end", "on_validation_end", "on_test_end", "on_predict_start", "on_predict_end",
    "on_predict_epoch_start", "on_predict_epoch_end", "on_predict_batch_start", "on_predict_batch_end",
    "on_exception", "on_save_checkpoint", "on_load_checkpoint",
})


def no_logging(module: TrainModule, name: str, fn: Callable) -> Callable:
    """``fn`` with ``self.log`` refused (naming the hook ``name``) while it runs."""
    def call(*args: Any) -> Any:
        outer = module.refuse_logging(name)
        try:
            return fn(*args)
        finally:
            module.refuse_logging(outer)
    return call


def where(state: Any, batch_idx: int | None = None) -> str:
    """Where the run is, for error notes: step, epoch, batch and stage (``state`` is ``trainer.state``)."""
    batch_idx = state.batch_idx if batch_idx is None else batch_idx
    return f"global_step {state.global_step} (epoch {state.current_epoch}, batch_idx {batch_idx}, stage {state.stage!r})"


def _batch_idx_arg(name: str, args: tuple) -> int | None:
    """The batch_idx a batch hook was called with (the loop's own counter has moved on by then)."""
    if name.endswith("_batch_start"):
        return args[1]  # (batch, batch_idx, ...)
    if name.endswith("_batch_end"):
        return args[2]  # (outputs, batch, batch_idx, ...)
    return None


def _overrides(obj: Any, base: type, name: str) -> bool:
    if base is Callback and name in getattr(obj, "__dict__", {}):  # a function set on the instance (LambdaCallback)
        return True
    impl = getattr(type(obj), name, None)
    return impl is not None and impl is not getattr(base, name, None)


def add_note(err: BaseException, note: str) -> None:
    """``err.add_note(note)``, on Python 3.10 too (the note joins the message there)."""
    if hasattr(err, "add_note"):
        err.add_note(note)
    else:  # Python 3.10: keep the type, extend the message
        err.args = (f"{err.args[0] if err.args else ''} ({note})",) + tuple(err.args[1:])


def module_override(module: TrainModule, name: str) -> Callable | None:
    """The module's bound ``name`` if its class overrides TrainModule's (e.g. ``lr_scheduler_step``), else None."""
    return getattr(module, name) if _overrides(module, TrainModule, name) else None
