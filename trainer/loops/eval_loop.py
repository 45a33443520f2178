"""Evaluation loops: validation (inside fit, or alone), test, and predict."""

from __future__ import annotations

import inspect
import itertools
from typing import Any, Callable

import torch

from trainer.data.datamodule import batch_mover
from trainer.engine.step_engine import count_items
from trainer.loops.hooks import add_note, where
from trainer.loops.step_errors import add_step_note
from trainer.module import TrainModule

_HOOK_PREFIX = {"validate": "validation", "sanity_check": "validation", "test": "test", "predict": "predict"}
_STEP = {"validate": "validation_step", "sanity_check": "validation_step", "test": "test_step",
         "predict": "predict_step"}


def check_step_signature(module: Any, stage: str, num_loaders: int, owner: str) -> None:
    """With several dataloaders the step gets a third argument, ``dataloader_idx``; say so
    before running rather than fail inside the first step with Python's arity error."""
    if num_loaders < 2:
        return
    name = _STEP[stage]
    try:
        inspect.signature(getattr(module, name)).bind(None, 0, 0)
    except ValueError:  # no signature to inspect (a builtin): let the call decide
        return
    except TypeError:
        raise TypeError(f"{owner} got {num_loaders} dataloaders, so {type(module).__name__}.{name} is called as "
                        f"{name}(batch, batch_idx, dataloader_idx); add a dataloader_idx argument, e.g. "
                        f"def {name}(self, batch, batch_idx, dataloader_idx=0).") from None


def takes_batch_idx(step: Any) -> bool:
    """Whether a step is called with ``batch_idx``: Lightning inspects the signature, so a
    ``training_step(self, batch)`` (its GAN example's) gets the batch alone."""
    fn = getattr(step, "__wrapped__", step)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to inspect (a builtin): pass it
        return True
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.name == "batch_idx" for p in params)


def without_batch_idx(step: Any, runner: Any = None) -> Any:
    """What the loops call as ``f(batch, batch_idx, *rest)``: ``runner`` (default ``step``; e.g. the
    strategy's wrapper around it), without ``batch_idx`` when ``step``'s signature takes none."""
    runner = step if runner is None else runner
    if takes_batch_idx(step):
        return runner
    return lambda batch, batch_idx, *rest: runner(batch, *rest)


def _overrides_module_hook(module: Any, name: str) -> bool:
    return getattr(type(module), name, None) is not getattr(TrainModule, name, None)


def _mode_hook(trainer: Any, module: Any, name: str) -> None:
    """Lightning's ``on_<stage>_model_eval`` / ``_model_train``: how the module's mode is switched
    (its default calls ``eval()`` / ``train()``); an error says which hook raised it."""
    try:
        getattr(module, name)()
    except Exception as err:
        add_note(err, f"raised in {type(module).__name__} (the TrainModule).{name} at {where(trainer.state)}")
        raise


def _no_grad(trainer: Any) -> Any:
    """``Trainer(inference_mode=True)`` (the default, as Lightning's): evaluation runs under
    ``torch.inference_mode`` (no autograd bookkeeping at all); False: ``torch.no_grad`` (for a step
    that needs tensors it can later use in autograd)."""
    return torch.inference_mode() if trainer.config.inference_mode else torch.no_grad()


def run_validation(trainer: Any, loaders: list[Any], stage: str, hooks: Any, metrics: Any,
                   limit: Callable[[str, Any], int | None]) -> list[dict[str, float]]:
    """Run ``validation_step`` (or ``test_step``) over ``loaders`` and publish epoch metrics.

    The Trainer hands over its collaborators: ``hooks`` (the stage's dispatch), ``metrics`` (the
    ``MetricsPublisher``) and ``limit(stage, loader)`` (batches to take from a loader)."""
    module, accel = trainer.module, trainer.accelerator
    check_step_signature(module, stage, len(loaders), f"trainer.{trainer.state.stage}")
    prefix, results = _HOOK_PREFIX[stage], metrics.stage_results(stage)
    results.reset()
    step_fn = without_batch_idx(getattr(module, _STEP[stage]))
    was_training, previous_results = module.training, module.log_into(results)
    _mode_hook(trainer, module, f"on_{prefix}_model_eval")  # by default module.eval()
    hooks(f"on_{prefix}_start")
    hooks(f"on_{prefix}_epoch_start")
    move_batch = batch_mover(trainer)
    with _no_grad(trainer):
        for dataloader_idx, loader in enumerate(loaders):
            results.suffix = f"/dataloader_idx_{dataloader_idx}" if len(loaders) > 1 else ""
            extra = (dataloader_idx,) if len(loaders) > 1 else ()
            for batch_idx, batch in enumerate(itertools.islice(loader, limit(stage, loader))):
                batch = move_batch(batch, dataloader_idx)
                results.batch_size = count_items(batch) or 1
                hooks(f"on_{prefix}_batch_start", batch, batch_idx, *extra)  # dataloader_idx: as the step gets it
                try:
                    with accel.autocast():
                        output = step_fn(batch, batch_idx, *extra)
                except Exception as err:
                    add_step_note(err, module, batch, _STEP[stage], batch_idx)
                    raise
                hooks(f"on_{prefix}_batch_end", output, batch, batch_idx, *extra)
    results.suffix = ""
    results.in_step = False
    hooks.module(f"on_{prefix}_epoch_end")
    values = metrics.publish_eval(stage, len(loaders))
    hooks.callbacks(f"on_{prefix}_epoch_end")
    results.in_step = True
    hooks(f"on_{prefix}_end")
    if _overrides_module_hook(module, f"on_{prefix}_model_train"):
        _mode_hook(trainer, module, f"on_{prefix}_model_train")
    elif was_training:
        module.train()
    module.log_into(previous_results)
    return values


def run_predict(trainer: Any, loaders: list[Any], keep: bool, hooks: Any,
                limit: Callable[[str, Any], int | None]) -> list[Any] | None:
    """``predict_step`` over every batch; returns its outputs (a list per loader if several), or None
    when ``keep`` is False (``return_predictions=False``: outputs are dropped after the batch hooks,
    unless a prediction writer writes them at epoch end)."""
    module, accel = trainer.module, trainer.accelerator
    check_step_signature(module, "predict", len(loaders), "trainer.predict")
    store = keep or any(getattr(cb, "writes_on_epoch", False) for cb in trainer.callbacks)
    loaders = [_recording_indices(loader) for loader in loaders]
    trainer.predict_batch_indices = [getattr(loader, "batch_indices", None) for loader in loaders]
    trainer.predictions = per_loader = []
    _mode_hook(trainer, module, "on_predict_model_eval")  # by default module.eval()
    hooks("on_predict_start")
    hooks("on_predict_epoch_start")
    move_batch = batch_mover(trainer)
    predict_step = without_batch_idx(module.predict_step)
    with _no_grad(trainer):
        for dataloader_idx, loader in enumerate(loaders):
            extra = (dataloader_idx,) if len(loaders) > 1 else ()
            outputs: list[Any] = []
            per_loader.append(outputs)
            for batch_idx, batch in enumerate(itertools.islice(loader, limit("predict", loader))):
                batch = move_batch(batch, dataloader_idx)
                hooks("on_predict_batch_start", batch, batch_idx, *extra)
                with accel.autocast():
                    output = predict_step(batch, batch_idx, *extra)
                hooks("on_predict_batch_end", output, batch, batch_idx, *extra)
                if store:
                    outputs.append(output)
    hooks("on_predict_epoch_end")
    hooks("on_predict_end")
    if not keep:
        trainer.predictions = None
        return None
    return per_loader[0] if len(per_loader) == 1 else per_loader


class _RecordingBatchSampler:
    """A batch sampler that remembers the dataset indices of every batch it gave, in order (the
    ``batch_indices`` a prediction writer receives; with workers the order is the same)."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.batch_indices: list[list[int]] = []

    def __iter__(self) -> Any:
        for indices in self.batch_sampler:
            self.batch_indices.append(list(indices))
            yield indices

    def __len__(self) -> int:
        return len(self.batch_sampler)


def _recording_indices(loader: Any) -> Any:
    if not isinstance(loader, torch.utils.data.DataLoader) or loader.batch_sampler is None \
            or isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return loader
    from trainer.data.data_position import loader_kwargs

    recorder = _RecordingBatchSampler(loader.batch_sampler)
    rebuilt = torch.utils.data.DataLoader(loader.dataset, batch_sampler=recorder, **loader_kwargs(loader))
    rebuilt.batch_indices = recorder.batch_indices
    return rebuilt
