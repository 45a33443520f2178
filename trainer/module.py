"""``TrainModule``: a ``torch.nn.Module`` that also says how to train, evaluate and log itself."""

from __future__ import annotations

import contextlib
import os
import inspect
import warnings
from typing import Any, Callable, Iterator, Mapping

import torch

from trainer.loops import manual


class AttributeDict(dict):
    """A dict whose keys are also attributes (``hparams.lr`` == ``hparams["lr"]``), as Lightning's."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"hparams has no {key!r}; it holds {sorted(self)}. Pass it to __init__ and call "
                                 f"self.save_hyperparameters(), or set self.hparams.{key} = ...") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __delattr__(self, key: str) -> None:
        del self[key]


class TrainModule(torch.nn.Module):
    """Write the model once; the ``Trainer`` runs it on any device or strategy.

    Override ``training_step`` and ``configure_optimizers``; the other steps and hooks
    are optional. Hooks a subclass does not override are never called.

    Example:
        >>> class Net(TrainModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(4, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         loss = torch.nn.functional.mse_loss(self.layer(x), y)
        ...         self.log("train/loss", loss)
        ...         return loss
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
    """

    def __init__(self) -> None:
        super().__init__()
        self._trainer: Any = None  # attach(trainer)
        self._results: Any = None  # log_into(results): where self.log writes, the running stage's Results
        self._warned_unattached_log = False
        self._no_log_hook: str | None = None  # refuse_logging(hook): a hook whose logged values are never shown runs
        self._hparams = AttributeDict()

    # -- what the user writes -------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement training_step(self, batch, batch_idx) "
                                  "returning a loss tensor, a dict with 'loss', or None to skip the batch.")

    def validation_step(self, batch: Any, batch_idx: int) -> Any: ...
    def test_step(self, batch: Any, batch_idx: int) -> Any: ...

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        return self(batch)

    def configure_optimizers(self) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} must implement configure_optimizers(self) returning an optimizer, "
            "(optimizer, scheduler), or {'optimizer': opt, 'lr_scheduler': {...}}.")

    def configure_model(self) -> None:
        """Build layers here (instead of ``__init__``) to create them under the strategy's control.

        With FSDP the layers built here are created on the ``meta`` device (no memory), sharded, and
        only then materialised: each process allocates its own shard and initialises it with the
        modules' ``reset_parameters()``. This is how a model larger than one device's memory is built.
        The Trainer calls it at the start of every fit/validate/test/predict: make it idempotent
        (e.g. ``if self.blocks is not None: return``)."""

    # -- data from the module itself (used when fit/validate/test/predict get no loaders) -------
    def prepare_data(self) -> None:
        """Download or write data to disk: once per machine, on local rank zero, before ``setup``."""

    def train_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.train_dataloader() is not implemented.")

    def val_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.val_dataloader() is not implemented.")

    def test_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.test_dataloader() is not implemented.")

    def predict_dataloader(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.predict_dataloader() is not implemented.")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change the batch before it moves to the device (runs in the main process)."""
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the batch to ``device``; override for batches of custom types."""
        return move_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Change the batch once it is on the device (e.g. GPU augmentations)."""
        return batch

    # -- hooks (same names as Callback's, without the trainer/module arguments) -----------
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_sanity_check_start(self) -> None: ...
    def on_sanity_check_end(self) -> None: ...
    def on_exception(self, exception: BaseException) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...

    # -- how evaluation switches the module's mode (Lightning's hooks; override to keep e.g. dropout on) --
    def on_validation_model_eval(self) -> None:
        """Before validation (and the sanity check): put the module in eval mode."""
        self.eval()

    def on_validation_model_train(self) -> None:
        """After validation during fit: back to train mode (called when overridden; else the loop
        restores the mode the module had)."""
        self.train()

    def on_test_model_eval(self) -> None:
        """Before testing: put the module in eval mode."""
        self.eval()

    def on_test_model_train(self) -> None:
        """After testing a module that was training (called when overridden)."""
        self.train()

    def on_predict_model_eval(self) -> None:
        """Before predicting: put the module in eval mode."""
        self.eval()

    # -- manual optimization (see trainer/loops/manual.py) ----------------------------------------
    automatic_optimization: bool = True  # set False in __init__ to step the optimizers in training_step

    def optimizers(self, use_pl_optimizer: bool = True) -> Any:
        """The optimizer(s) of ``configure_optimizers``: one, or a list in the order returned. Their
        ``step()``/``zero_grad()`` go through the strategy and precision (``use_pl_optimizer=False``:
        the raw torch optimizers)."""
        return manual.module_optimizers(self, use_pl_optimizer)

    def lr_schedulers(self) -> Any:
        """The scheduler(s) of ``configure_optimizers`` (one, a list, or None); in manual
        optimization the module steps them."""
        return manual.module_lr_schedulers(self)

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward(*args, **kwargs)`` for manual optimization: loss scaling, the backward
        hooks and, with several processes, gradients averaged across them."""
        manual.manual_backward(self, loss, *args, **kwargs)

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Until ``untoggle_optimizer``, only ``optimizer``'s parameters require grad."""
        manual.toggle_optimizer(self, optimizer)

    def untoggle_optimizer(self, optimizer: Any) -> None:
        manual.untoggle_optimizer(self, optimizer)

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Iterator[None]:
        """``toggle_optimizer`` for the block, ``untoggle_optimizer`` after it."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def clip_gradients(self, optimizer: Any, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str | None = None) -> None:
        """Clip ``optimizer``'s gradients by norm (default) or value, after undoing the loss scale."""
        manual.clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def freeze(self) -> None:
        """No parameter requires grad, and the module is in eval mode (for inference or as a fixed part)."""
        for param in self.parameters():
            param.requires_grad = False
        self.eval()

    def unfreeze(self) -> None:
        """Every parameter requires grad again, and the module is in train mode."""
        for param in self.parameters():
            param.requires_grad = True
        self.train()

    # -- overridable steps of automatic optimization (Lightning's names) ----------------------------
    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Automatic optimization's backward of the step's loss: ``loss.backward(*args, **kwargs)``. The
        ``loss`` is already weighted for its accumulation window and, under ``precision="16-mixed"``,
        multiplied by the gradient scaler's scale. Override it to run backward your own way (e.g.
        ``retain_graph=True``); ``on_before_backward``/``on_after_backward`` run around it. Not with
        DeepSpeed, whose engine runs the backward (refused at fit start). Manual optimization: ``manual_backward``."""
        loss.backward(*args, **kwargs)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Callable[[], Any] | None = None) -> None:
        """Step ``optimizer`` once an accumulation window closed (``batch_idx``: the window's last batch).
        ``optimizer_closure`` gets the step ready (``on_before_optimizer_step``, gradient clipping) and returns
        the last training step's loss; ``training_step`` and the backward have already run. An override must
        call it, usually as ``optimizer.step(closure=optimizer_closure)`` (skip a step by calling
        ``optimizer_closure()`` alone). ``optimizer.step`` goes through the strategy and precision, and counts
        ``global_step``."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        """Zero the gradients after each optimizer step (``set_to_none=True``); after
        ``on_before_zero_grad``. Override it to keep gradients or zero them another way."""
        optimizer.zero_grad()

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Called at every optimizer step, after ``on_before_optimizer_step``, with the Trainer's
        ``gradient_clip_val``/``gradient_clip_algorithm``; the gradients are already unscaled.
        Override it to clip your own way (e.g. per parameter group) with ``self.clip_gradients``."""
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step one scheduler when its interval comes (``metric``: the monitored value for
        ReduceLROnPlateau, else None). Override it for a scheduler with another ``step`` signature
        (e.g. timm's ``scheduler.step(epoch=self.current_epoch)``)."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # -- services -------------------------------------------------------------------------
    @property
    def hparams(self) -> AttributeDict:
        """The hyperparameters (``save_hyperparameters()``): a dict with attribute access."""
        return self._hparams

    @hparams.setter
    def hparams(self, value: Mapping[str, Any]) -> None:
        self._hparams = AttributeDict(vars(value) if hasattr(value, "__dict__") and not isinstance(value, Mapping)
                                      else value)

    @property
    def trainer(self) -> Any:
        """The Trainer running this module (set by ``attach``); a RuntimeError when none is attached."""
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__}.trainer: this module is not attached to a Trainer. "
                               "It is attached while trainer.fit/validate/test/predict runs.")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Any) -> None:  # Lightning's `module.trainer = trainer`
        self.attach(trainer)

    def attach(self, trainer: Any) -> None:
        """Attach this module to ``trainer`` (None: detach). The Trainer calls it when a stage starts;
        ``self.trainer``, ``self.global_step``, ``self.loggers``, ... read the attached Trainer, and give
        their unattached values (0, [], None) without one."""
        self._trainer = trainer

    @property
    def is_attached(self) -> bool:
        """True while a Trainer is attached (``self.trainer`` raises otherwise)."""
        return self._trainer is not None

    def refuse_logging(self, hook: str | None) -> str | None:
        """Make ``self.log`` raise, naming ``hook``, while a hook whose logged values are never shown runs
        (``on_fit_start``, ``setup``, ...; Lightning refuses them too); None: allowed again. The hook
        dispatcher calls it around those hooks; returns the previous refusal, which a nested call gives back."""
        previous, self._no_log_hook = self._no_log_hook, hook
        return previous

    def log_into(self, results: Any) -> Any:
        """Send this module's ``self.log`` calls to ``results`` (the running stage's
        ``trainer.logs.results.Results``; None: outside a stage, where ``self.log`` warns once and does
        nothing). The loops call it when a stage or an evaluation inside fit starts; returns the
        previous target, which an evaluation inside fit gives back when it ends."""
        previous, self._results = self._results, results
        return previous

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def on_gpu(self) -> bool:
        """True when the module's parameters are on a CUDA device (Lightning's ``on_gpu``)."""
        return self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the module's floating-point parameters (float32 if it has none)."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    @property
    def logger(self) -> Any:
        """The Trainer's first logger (None when not attached or logging is off)."""
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        return list(self._trainer.loggers) if self._trainer is not None else []

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_rank(self) -> int:
        """This process's rank among all processes of the job (0 when not attached, as in Lightning)."""
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        """This process's rank on its machine (0 when not attached)."""
        return self._trainer.local_rank if self._trainer is not None else 0

    def log(self, name: str, value: Any, *, prog_bar: bool = False, logger: bool = True,
            on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: Any = "mean",
            sync_dist: bool = False, batch_size: int | None = None) -> None:
        """Record a scalar metric. The value stays on the device; it is read back at log
        intervals. Defaults: in ``training_step`` ``on_step=True, on_epoch=False``; in
        evaluation steps and epoch hooks ``on_step=False, on_epoch=True``. Epoch values are
        the mean weighted by batch size (or ``reduce_fx``: "sum", "max", "min", a callable).
        With ``sync_dist=True`` the value is reduced across processes.
        """
        if self._no_log_hook is not None:
            from trainer.strategies.exceptions import MisconfigurationException

            raise MisconfigurationException(
                f"self.log({name!r}, ...) inside {self._no_log_hook}: a value logged there is never shown (no "
                f"step or epoch row follows it; Lightning refuses it too). Log it from a step (training_step, "
                f"validation_step) or an epoch hook (on_train_epoch_end, on_validation_epoch_end) instead.")
        if self._results is None:
            if not self._warned_unattached_log:
                self._warned_unattached_log = True
                warnings.warn(f"self.log({name!r}, ...) called outside trainer.fit/validate/test: ignored.",
                              stacklevel=2)
            return
        self._results.log(name, value, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                          reduce_fx=reduce_fx, sync_dist=sync_dist, batch_size=batch_size)

    def log_dict(self, metrics: Mapping[str, Any], **kwargs: Any) -> None:
        """``self.log`` for each item; keyword arguments apply to all."""
        for name, value in metrics.items():
            self.log(name, value, **kwargs)

    def save_hyperparameters(self, *args: Any, ignore: str | tuple[str, ...] | list[str] = ()) -> None:
        """Store the calling ``__init__``'s arguments in ``self.hparams`` (checkpointed and logged).

        Call it inside ``__init__``; pass names to keep only those, or ``ignore=`` to drop some.
        A single dict or ``argparse.Namespace`` argument is stored as it is.
        """
        self.hparams = save_hyperparameters(self.hparams, args, ignore, inspect.currentframe())

    def configure_callbacks(self) -> Any:
        """Callbacks this model needs wherever it is trained. They join the Trainer's; one of the same
        type as a Trainer callback replaces it (as in Lightning); ModelCheckpoint callbacks run last."""
        return []

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """``data`` (a tensor, a number, or a dict/list/tuple of them) from every process, stacked on a
        new first dimension of size world_size. On one process it is returned as it is (as
        Lightning's). ``sync_grads=True``: gradients flow back through the gather."""
        world_size = self._trainer.world_size if self._trainer is not None else 1
        if world_size == 1:
            return data
        strategy = self._trainer.strategy

        def gather(value: Any) -> Any:
            if isinstance(value, dict):
                return type(value)({k: gather(v) for k, v in value.items()})
            if isinstance(value, (list, tuple)):
                return type(value)(gather(v) for v in value)
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value, device=self.device)
            if sync_grads:
                from torch.distributed.nn.functional import all_gather

                return torch.stack(all_gather(tensor, group=group) if group is not None else all_gather(tensor))
            if group is not None:
                parts = [torch.empty_like(tensor) for _ in range(world_size)]
                torch.distributed.all_gather(parts, tensor.contiguous(), group=group)
                return torch.stack(parts)
            return strategy.all_gather(tensor)
        return gather(data)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str, map_location: Any = None, strict: bool | None = None,
                             **overrides: Any) -> "TrainModule":
        """Rebuild the module from a checkpoint: ``cls(**saved hparams, **overrides)``, then its weights.

        The hyperparameters are those ``save_hyperparameters()`` stored; a value that was not a plain
        number, string, list or dict was saved as its ``repr`` -- pass it again as an override.
        """
        from trainer.persistence.trainer_checkpoint import check_compatible, load_weights_into
        from trainer.strategies.checkpoint_io import safe_load

        if not os.path.exists(str(checkpoint_path)):
            raise FileNotFoundError(f"{cls.__name__}.load_from_checkpoint({str(checkpoint_path)!r}): no such file. Pass "
                                    "the path of a checkpoint written by Trainer.save_checkpoint or ModelCheckpoint "
                                    "(e.g. trainer.checkpoint_callback.best_model_path).")
        ckpt = safe_load(str(checkpoint_path))
        check_compatible(ckpt, str(checkpoint_path), world_size=None)  # weights only: any world size
        if not ckpt.get("state_dict"):
            raise ValueError(f"{cls.__name__}.load_from_checkpoint({str(checkpoint_path)!r}): the checkpoint holds no "
                             "weights (a sharded checkpoint keeps them in its shards). Merge it first with "
                             "`trainer merge-weights`.")
        model = _construct(cls, ckpt, overrides, str(checkpoint_path))
        load_weights_into(model, ckpt["state_dict"], str(checkpoint_path),
                          strict=getattr(model, "strict_loading", True) if strict is None else strict,
                          writer=ckpt["metadata"].get("module"))
        model.on_load_checkpoint(ckpt)
        if map_location is not None:
            model.to(map_location if not callable(map_location) else "cpu")
        return model

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print once per job (on rank zero)."""
        if self._trainer is None or self._trainer.is_global_zero:
            print(*args, **kwargs)


def save_hyperparameters(hparams: AttributeDict, args: tuple, ignore: Any, frame: Any) -> AttributeDict:
    """What ``save_hyperparameters(*args, ignore=...)`` stores, read from the ``__init__`` that called it
    (``frame`` is the ``save_hyperparameters`` method's own frame). Shared with ``DataModule``."""
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    if len(args) == 1 and not isinstance(args[0], str):
        given = args[0]
        given = vars(given) if hasattr(given, "__dict__") and not isinstance(given, Mapping) else given
        if not isinstance(given, Mapping):
            raise TypeError(f"save_hyperparameters({args[0]!r}): expected argument names (str), a dict or an "
                            "argparse.Namespace.")
        return AttributeDict({**hparams, **{k: v for k, v in given.items() if k not in ignore}})
    caller = frame.f_back if frame is not None else None
    if caller is None:
        return hparams
    info = inspect.getargvalues(caller)
    keys = [a for a in info.args if a != "self"]
    if info.varargs:
        keys.append(info.varargs)
    values = {k: caller.f_locals[k] for k in keys if k in caller.f_locals}
    values.update(caller.f_locals.get(info.keywords or "", {}) if info.keywords else {})
    unknown = [n for n in args if n not in values]
    if unknown:
        raise ValueError(f"save_hyperparameters({', '.join(map(repr, args))}): {unknown[0]!r} is not an argument of "
                         f"the calling __init__, whose arguments are {sorted(values)}.")
    chosen = args or tuple(values)
    return AttributeDict({**hparams, **{k: values[k] for k in chosen if k not in ignore}})


def _construct(cls: type[Any], ckpt: dict[str, Any], overrides: dict[str, Any], path: str) -> Any:
    """``cls(**saved hparams, **overrides)``; an ``__init__`` whose one argument takes a dict or a
    Namespace (``save_hyperparameters(hp)``) gets them as one AttributeDict. A keyword override that
    is no argument of ``cls.__init__`` is the caller's mistake and named as such; saved hparams that
    are not arguments mean a checkpoint of another class, named with how its weights differ."""
    hparams = ckpt.get("hparams", {})
    params = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]]
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    names = {p.name for p in named}
    merged = {**hparams, **overrides}
    call = f"{cls.__name__}.load_from_checkpoint({path!r}{''.join(f', {k}={_short(v)}' for k, v in overrides.items())})"
    one_dict = len(named) == 1 and not set(hparams) <= names and _takes_a_dict(named[0])
    wrong = sorted(set(overrides) - names)
    if wrong and not takes_kwargs and not one_dict:
        raise TypeError(f"{call}: {wrong[0]}={_short(overrides[wrong[0]])} is not an argument of {cls.__name__}.__init__ "
                        f"{_signature(cls)}. Keyword overrides replace the saved hparams of that name; pass only "
                        "arguments the class takes.")
    if takes_kwargs or set(merged) <= names:
        try:
            return cls(**merged)
        except TypeError as err:
            raise TypeError(f"{call}: {cls.__name__}(**hparams) failed ({err}). The checkpoint's hparams are "
                            f"{sorted(hparams)}; pass missing arguments as keyword overrides.") from None
    if one_dict:
        return cls(AttributeDict(merged))
    unknown = sorted(set(hparams) - names)
    writer = ckpt.get("metadata", {}).get("module")
    by = f"was written by {writer}" if writer else "does not record which class wrote it"
    raise TypeError(f"{call}: the checkpoint {by}; the checkpoint's hparams {unknown} are not arguments of "
                    f"{cls.__name__}.__init__ ({sorted(names)}), so it is not a checkpoint of {cls.__name__}"
                    f"{_weights_against(cls, ckpt, {k: v for k, v in merged.items() if k in names})}. Load it with "
                    f"the class that wrote it, or pass the arguments {cls.__name__} needs as overrides and drop "
                    "the rest from the checkpoint's hparams.")


def _takes_a_dict(param: inspect.Parameter) -> bool:
    """Whether an ``__init__`` argument may be the one dict/Namespace of hyperparameters: no default
    (or None, or a mapping) and no scalar annotation. ``width: int = 16`` is not."""
    default, annotation = param.default, param.annotation
    if default is not param.empty and default is not None and not isinstance(default, Mapping) \
            and not hasattr(default, "__dict__"):
        return False
    scalars = (int, float, str, bool, "int", "float", "str", "bool")
    return not any(annotation is s or annotation == s for s in scalars)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _signature(cls: type[Any]) -> str:
    """``(hidden=32, lr=0.1)``: the arguments of ``cls.__init__`` after self, with their defaults."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return "(" + ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params) + ")"


def _weights_against(cls: type, ckpt: dict[str, Any], known: dict[str, Any]) -> str:
    """How the checkpoint's weights differ from a ``cls`` built from the hparams it takes (nothing
    when it cannot be built so)."""
    from trainer.persistence.trainer_checkpoint import weight_differences

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            own = cls(**known).state_dict()
    except Exception:  # noqa: BLE001 -- only a diagnostic: the class may need arguments it was not given
        return ""
    parts = weight_differences(own, ckpt.get("state_dict") or {})
    if not parts:
        return " (its weights have the same names and shapes)"
    return f" (against {cls.__name__}({', '.join(f'{k}={v!r}' for k, v in known.items())}) its weights differ: " \
        + "; ".join(parts) + ")"


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Every tensor in ``batch`` (nested lists, tuples, dicts) on ``device``."""
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t, batch)
