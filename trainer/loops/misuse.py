"""The common first-hour mistakes that would otherwise do nothing, silently: each is said once, in one
rank-zero line that names the fix (or, where running would only return nothing, refused).

- ``warn_misnamed_hooks``: a method named like a hook that is not one (``on_train_epoch_ends``,
  ``validation_steps``) on the module or a callback is never called; said at fit start with the hook
  it resembles.
- ``refuse_missing_step``: ``trainer.test()`` on a module without ``test_step`` (likewise ``validate`` /
  ``predict``) has nothing to run; it used to return ``[{}]``.
- ``note_validation_skipped``: ``validation_step`` is defined but fit got no validation data.
- ``NOTHING_TRAINED``: every ``training_step`` of an epoch returned None (the fit loop counts them).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Iterable

from trainer.logs.console import rank_zero_info, rank_zero_warn
from trainer.callbacks.base import Callback
from trainer.module import TrainModule
from trainer.strategies.exceptions import MisconfigurationException

_STEP = {"validate": "validation_step", "test": "test_step", "predict": "predict_step"}


def _hooks_of(base: type) -> list[str]:
    return [name for name, value in inspect.getmembers(base) if not name.startswith("_") and callable(value)]


def _own_methods(obj: Any, base: type) -> list[str]:
    """Public methods the object's classes (below ``base``) define that ``base`` does not have."""
    names: list[str] = []
    for cls in type(obj).__mro__:
        if cls is base or not issubclass(cls, base):
            continue
        names += [n for n, v in vars(cls).items() if not n.startswith("_") and callable(v) and not hasattr(base, n)]
    return sorted(set(names))


def misnamed_hooks(obj: Any, base: type) -> list[tuple[str, str]]:
    """(method, the hook it resembles) for each method of ``obj`` that looks like a misspelt hook of ``base``."""
    hooks = _hooks_of(base)
    found = []
    for name in _own_methods(obj, base):
        close = difflib.get_close_matches(name, hooks, n=1, cutoff=0.85)
        if close:
            found.append((name, close[0]))
    return found


def warn_misnamed_hooks(module: TrainModule, callbacks: Iterable[Any]) -> None:
    """Rank-zero warning, one line per method, at fit start."""
    owners = [(module, TrainModule, "the module")] + [(cb, Callback, "a callback") for cb in callbacks
                                                      if isinstance(cb, Callback)]
    for obj, base, what in owners:
        for name, hook in misnamed_hooks(obj, base):
            rank_zero_warn(f"{type(obj).__name__}.{name} is not a hook, so it is never called (it is a method of "
                           f"{what}). Did you mean {hook}? Rename it to override that hook.")


def refuse_missing_step(module: TrainModule, stage: str, call: str) -> None:
    """``trainer.validate/test/predict`` on a module without the step that stage runs: refused with the fix
    (a ``MisconfigurationException``, as Lightning raises there)."""
    step = _STEP[stage]
    name = type(module).__name__
    if getattr(module, step, None) is None:  # switched off by assignment (module.validation_step = None)
        missing = True
    elif stage == "predict":  # the default predict_step calls forward: one of the two must exist
        missing = not _overrides(module, step) and type(module).forward is TrainModule.forward
    else:
        missing = not _overrides(module, step) and step not in vars(module)
    if not missing:
        return
    fix = {"validate": "def validation_step(self, batch, batch_idx): self.log('val/loss', ...)",
           "test": "def test_step(self, batch, batch_idx): self.log('test/loss', ...)",
           "predict": "def predict_step(self, batch, batch_idx): return self(batch) (or define forward)"}[stage]
    raise MisconfigurationException(f"{call}: {name} defines no {step}, so there is nothing to run (it would return no results). "
                    f"Add it to {name}: {fix}.")


def _overrides(module: Any, name: str) -> bool:
    return getattr(type(module), name, None) is not getattr(TrainModule, name, None)


def note_validation_skipped(module: TrainModule, has_val_data: bool) -> None:
    """fit with ``validation_step`` defined but no validation data: say that validation is skipped."""
    if not has_val_data and getattr(module, "validation_step", None) is not None and _overrides(module, "validation_step"):
        rank_zero_info(f"{type(module).__name__} defines validation_step, but fit got no validation data, so validation "
                       "is skipped. Pass val_dataloaders=... (or a datamodule / module with val_dataloader()) to run it.")


NOTHING_TRAINED = ("training_step returned None for all {batches} batches of epoch {epoch}, so nothing was trained "
                   "(no backward, no optimizer step). Return the loss (a tensor, or a dict with 'loss'); None skips "
                   "a batch.")
