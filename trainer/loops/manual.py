"""Manual optimization: the module steps its own optimizers (``automatic_optimization = False``).

In this mode the loop only calls ``training_step`` (under the precision's autocast); it does not
backward, clip, step, zero, accumulate or step schedulers. The module does, through:

    self.optimizers()            ModuleOptimizer(s): step() / zero_grad() through the step engine (the
                                 strategy's driver: gradient scaler), each step counted in global_step
    self.lr_schedulers()         the schedulers from configure_optimizers, stepped by the module
    self.manual_backward(loss)   the precision's loss scaling, the backward hooks, and under DDP the
                                 gradients averaged across processes right after the backward
    self.toggle_optimizer(opt)   only ``opt``'s parameters require grad until untoggle_optimizer(opt)
    self.clip_gradients(opt, gradient_clip_val=..., gradient_clip_algorithm="norm" | "value")

Under DDP the training step does not run through DDP's forward (its reducer expects exactly one
backward per forward, while a GAN runs several): ``manual_backward`` averages the gradients itself
(``Strategy.average_gradients``). Averaging is linear, so gradients accumulated over several
backward calls, or averaged once already, come out as the mean over processes either way.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import torch


class ModuleOptimizer:
    """What ``self.optimizers()`` returns (Lightning's ``LightningOptimizer``): the user's optimizer,
    whose ``step`` and ``zero_grad`` go through the step engine (the strategy's driver and the
    precision), which counts each step. The optimizer itself is ``.optimizer``; other attributes are
    read from it. ``step_was_skipped``: the last step's result (16-mixed found inf/nan gradients).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, trainer: Any) -> None:
        self.optimizer = optimizer
        self._trainer = trainer
        self.step_was_skipped = False

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Step the optimizer (with ``closure`` if given: it runs the forward and ``manual_backward``;
        LBFGS calls it several times). ``on_before_optimizer_step`` runs after the closure."""
        trainer = self._trainer
        hooks = trainer.fit_loop.hooks
        has_hook = hooks.has("on_before_optimizer_step")

        def wrapped() -> Any:
            out = closure() if closure is not None else None
            if has_hook:
                hooks("on_before_optimizer_step", self.optimizer)
            return out

        engine = trainer.accelerator.engine
        if closure is None:
            wrapped()
        # the engine counts every step in global_step, as Lightning does (its plan in manual optimization)
        result = engine.step(self.optimizer, wrapped if closure is not None else None)
        self.step_was_skipped = result.skipped
        return result.closure_result

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._trainer.accelerator.engine.zero_grad(self.optimizer, set_to_none=set_to_none)

    @contextlib.contextmanager
    def toggle_model(self) -> Iterator[None]:
        """Inside the block only this optimizer's parameters require grad."""
        module = self._trainer.module
        module.toggle_optimizer(self)
        try:
            yield
        finally:
            module.untoggle_optimizer(self)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def __getattr__(self, name: str) -> Any:
        if name in ("optimizer", "_trainer"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    def __repr__(self) -> str:
        return f"ModuleOptimizer({type(self.optimizer).__name__})"


class StepOptimizer(ModuleOptimizer):
    """What a module's ``optimizer_step`` / ``optimizer_zero_grad`` override receives in automatic
    optimization. ``step(closure)`` runs the closure, then ``prepare`` (the loop's own preparation of the
    step: on_before_optimizer_step and clipping, once, in case ``closure`` was another callable), then the
    engine's step (precision, strategy, ``global_step``); returns the closure's result."""

    def __init__(self, optimizer: torch.optim.Optimizer, trainer: Any, prepare: Callable[[], Any]) -> None:
        super().__init__(optimizer, trainer)
        self._prepare = prepare

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        out = closure() if closure is not None else None
        self._prepare()
        result = self._trainer.accelerator.engine.step(self.optimizer)
        self.step_was_skipped = result.skipped
        return out


def _raw(optimizer: Any) -> torch.optim.Optimizer:
    return optimizer.optimizer if isinstance(optimizer, ModuleOptimizer) else optimizer


def _params_of(optimizer: Any) -> list[torch.nn.Parameter]:
    return [p for group in _raw(optimizer).param_groups for p in group["params"]]


def check_manual_settings(module: Any, config: Any) -> None:
    """In manual mode the Trainer does not step, so it cannot accumulate or clip for you."""
    if getattr(module, "automatic_optimization", True):
        return
    name = type(module).__name__
    if config.accumulate_grad_batches != 1:
        k = config.accumulate_grad_batches
        raise ValueError(
            f"Trainer(accumulate_grad_batches={k}) with manual optimization ({name}.automatic_optimization = "
            "False): the Trainer does not step your optimizers, so it cannot accumulate for you. Remove "
            f"accumulate_grad_batches and step every {k} batches in training_step (`self.manual_backward(loss)`; "
            f"`if (batch_idx + 1) % {k} == 0: opt.step(); opt.zero_grad()`), or use automatic optimization.")
    if config.gradient_clip_val:
        raise ValueError(
            f"Trainer(gradient_clip_val={config.gradient_clip_val}) with manual optimization ({name}."
            "automatic_optimization = False): the Trainer does not step your optimizers, so it cannot clip for "
            "you. Remove gradient_clip_val and call `self.clip_gradients(opt, gradient_clip_val="
            f"{config.gradient_clip_val}, gradient_clip_algorithm='{config.gradient_clip_algorithm}')` "
            "between self.manual_backward(loss) and opt.step(), or use automatic optimization.")


def module_optimizers(module: Any, use_pl_optimizer: bool) -> Any:
    trainer = _attached(module, "optimizers()")
    wrapped = trainer.fit_loop.module_optimizers if use_pl_optimizer else trainer.optimizers
    if not wrapped:
        raise RuntimeError(f"{type(module).__name__}.optimizers(): no optimizers yet; they are set up by "
                           "trainer.fit before training starts (call it from training_step or a fit hook).")
    return wrapped[0] if len(wrapped) == 1 else list(wrapped)


def module_lr_schedulers(module: Any) -> Any:
    schedulers = [cfg.scheduler for cfg in _attached(module, "lr_schedulers()").lr_scheduler_configs]
    if not schedulers:
        return None
    return schedulers[0] if len(schedulers) == 1 else schedulers


def manual_backward(module: Any, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    trainer = _attached(module, "manual_backward(loss)")
    if getattr(module, "automatic_optimization", True):
        raise RuntimeError(f"{type(module).__name__}.manual_backward(loss) is for manual optimization; this module "
                           "uses automatic optimization, where the Trainer runs the backward of the loss that "
                           "training_step returns. Return the loss instead, or set `self.automatic_optimization = "
                           "False` in __init__ to step the optimizers yourself.")
    hooks = trainer.fit_loop.hooks
    if hooks.has("on_before_backward"):
        hooks("on_before_backward", loss)
    trainer.accelerator.engine.manual_backward(loss, module, *args, **kwargs)
    if hooks.has("on_after_backward"):
        hooks("on_after_backward")


def toggle_optimizer(module: Any, optimizer: Any) -> None:
    """Only ``optimizer``'s parameters require grad; the others' flags are saved for untoggle."""
    trainer = _attached(module, "toggle_optimizer(optimizer)")
    own = {id(p) for p in _params_of(optimizer)}
    saved: dict[int, tuple[torch.nn.Parameter, bool]] = {}
    for other in trainer.optimizers:
        for p in _params_of(other):
            if id(p) not in own and id(p) not in saved:
                saved[id(p)] = (p, p.requires_grad)
                p.requires_grad_(False)
    module._toggled_requires_grad = saved


def untoggle_optimizer(module: Any, optimizer: Any) -> None:
    """Put back the ``requires_grad`` flags that ``toggle_optimizer`` changed."""
    for p, flag in getattr(module, "_toggled_requires_grad", {}).values():
        p.requires_grad_(flag)
    module._toggled_requires_grad = {}


def clip_gradients(module: Any, optimizer: Any, gradient_clip_val: float | None,
                   gradient_clip_algorithm: str | None) -> None:
    """Clip ``optimizer``'s gradients after undoing the loss scale (16-mixed)."""
    trainer = _attached(module, "clip_gradients(optimizer, ...)")
    algorithm = gradient_clip_algorithm or "norm"
    if algorithm not in ("norm", "value"):
        raise ValueError(f"clip_gradients(gradient_clip_algorithm={gradient_clip_algorithm!r}): expected 'norm' or "
                         "'value'.")
    if gradient_clip_val is None:
        gradient_clip_val = trainer.config.gradient_clip_val
    if not gradient_clip_val:
        return
    if isinstance(gradient_clip_val, bool) or not isinstance(gradient_clip_val, (int, float)) \
            or not math.isfinite(gradient_clip_val) or gradient_clip_val < 0:
        raise ValueError(f"clip_gradients(gradient_clip_val={gradient_clip_val!r}): expected a finite number >= 0.")
    trainer.accelerator.engine.clip(_raw(optimizer), float(gradient_clip_val), algorithm)


def _attached(module: Any, what: str) -> Any:
    if not module.is_attached:
        raise RuntimeError(f"{type(module).__name__}.{what}: this module is not attached to a Trainer; call it "
                           "inside training_step (or another hook) while trainer.fit runs.")
    return module.trainer
