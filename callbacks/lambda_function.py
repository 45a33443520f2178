"""``LambdaCallback``: a callback made of functions, one per hook, for quick experiments."""

from __future__ import annotations

from typing import Any, Callable

from trainer.strategies.support import did_you_mean

from .base import HOOK_NAMES, Callback


class LambdaCallback(Callback):
    """Runs the given function on each named hook, with the hook's arguments (``trainer, module, ...``).

    Example:
        >>> LambdaCallback(on_train_epoch_end=lambda trainer, module: print(trainer.current_epoch))  # doctest: +SKIP

    Args:
        **hooks: ``hook_name=function``; any hook of ``Callback`` (``on_fit_start``, ``on_train_batch_end``,
            ``setup``, ``on_save_checkpoint``...). Hooks not given are never called.
    """

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        for name, fn in hooks.items():
            if name not in HOOK_NAMES:
                raise TypeError(f"LambdaCallback({name}=...): not a callback hook.{did_you_mean(name, HOOK_NAMES)} "
                                "Pass one function per hook of trainer.callbacks.Callback, e.g. "
                                "LambdaCallback(on_train_epoch_end=lambda trainer, module: ...).")
            if not callable(fn):
                raise TypeError(f"LambdaCallback({name}={fn!r}): expected a function taking the hook's arguments "
                                f"(trainer, module, ...), got a {type(fn).__name__}.")
        # kept on the instance: the dispatcher calls an instance's own hook functions (hooks.py), so only
        # these run, each as fn(trainer, module, ...)
        vars(self).update(hooks)
