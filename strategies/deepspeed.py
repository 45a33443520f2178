"""``DeepSpeedStrategy``: ZeRO stages 0-3 through DeepSpeed's engine (imported only when used).

The engine owns backward, the gradient reduction, loss scaling, clipping and the optimizer step;
the Trainer's settings (accumulation, precision, clipping) are written into its config. The loop
keeps its own accumulation windows: DeepSpeed runs with ``managed_gradient_accumulation=False``, so
each ``backward`` only accumulates and each ``engine.step()`` (at the window's end) reduces and
updates -- the same step count and normalisation as every other strategy.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import warnings
from typing import Any, Callable, ContextManager, Iterable, cast

import torch

from .ddp import StepForward
from .driver import STEPPED, Driver, StepResult, WindowFix
from .checkpoint_format import CheckpointFormat, DeepSpeedFormat
from .environment import ClusterEnvironment
from .precision import Precision
from .process_group import ProcessGroup
from .strategy import Strategy

_DS_PRECISION = {"bf16-mixed": "bf16", "16-mixed": "fp16", "32-true": None}


def _require_deepspeed() -> Any:
    try:
        import deepspeed
    except ImportError as err:
        raise ImportError("DeepSpeedStrategy needs the 'deepspeed' package, which is not installed: "
                          "pip install 'trainer[deepspeed]'.") from err
    return deepspeed


def _initialize(deepspeed: Any, device: torch.device, **kwargs: Any) -> Any:
    """``deepspeed.initialize``, without the shared-memory op its comm backend builds on the CPU.

    On the CPU accelerator DeepSpeed's comm backend JIT-compiles ``deepspeed_shm_comm`` when it starts
    (a C++ build of about one CPU-minute, three at a busy machine, on the first run in each
    environment) although only ``inference_all_reduce`` (DeepSpeed-Inference) calls it: training
    reduces through ``torch.distributed``. Marking the op unavailable in DeepSpeed's own table of
    compatible ops, before the backend starts, skips the build; ``inference_all_reduce`` then falls back to
    ``torch.distributed.all_reduce``. Once the backend is running (a second engine in the process) the
    table is no longer read.
    """
    if device.type == "cpu" and getattr(deepspeed.comm.comm, "cdb", None) is None:
        try:
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        except (AttributeError, TypeError):  # a DeepSpeed without the table: it builds as it always did
            pass
    return deepspeed.initialize(**kwargs)


class DeepSpeedStrategy(Strategy):
    """ZeRO data parallelism: optimizer state (stage 1), gradients (2) and parameters (3) sharded.

    Args:
        zero_stage: 0, 1, 2 or 3.
        offload_optimizer: keep optimizer state on the CPU (stage 1 or more).
        offload_parameters: keep parameters on the CPU (stage 3).
        config: a DeepSpeed config dict or the path of its JSON file; its ``zero_optimization`` and
            other sections are used as given, except where the Trainer's own arguments decide
            (accumulation, precision, clipping): a disagreement is reported once and the Trainer's
            value wins.
        precision: "32-true", "bf16-mixed" or "16-mixed" (DeepSpeed's bf16 / fp16 with loss scaling).
        timeout: collectives' timeout.
        device_kind: "cpu" or "cuda".
        process_group_backend, environment, requested_processes: as for DDPStrategy.

    Example:
        >>> Trainer(strategy=DeepSpeedStrategy(zero_stage=3))            # doctest: +SKIP
        >>> Trainer(strategy="deepspeed_stage_2", precision="bf16-mixed")  # doctest: +SKIP
    """

    distributed_type = "DEEPSPEED"  # Accelerate's name (a property on the base)
    processes: ProcessGroup  # always a process group (made in __init__)

    def __init__(self, zero_stage: int = 2, offload_optimizer: bool = False, offload_parameters: bool = False,
                 config: dict[str, Any] | str | None = None, precision: Precision | str | None = None,
                 device_kind: str = "cpu", timeout: datetime.timedelta | float | None = None,
                 process_group_backend: str | None = None, environment: ClusterEnvironment | None = None,
                 requested_processes: int = 1) -> None:
        super().__init__(precision, ProcessGroup(device_kind, timeout, process_group_backend, environment,
                                                 requested_processes, owner="DeepSpeedStrategy"))
        self.device_kind = device_kind
        if zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"DeepSpeedStrategy(zero_stage={zero_stage!r}): expected 0, 1, 2 or 3.")
        if offload_parameters and zero_stage != 3:
            raise ValueError(f"DeepSpeedStrategy(offload_parameters=True, zero_stage={zero_stage}): parameters can only "
                             "be offloaded with ZeRO stage 3. Set zero_stage=3 (or 'deepspeed_stage_3_offload').")
        if offload_optimizer and zero_stage == 0:
            raise ValueError("DeepSpeedStrategy(offload_optimizer=True, zero_stage=0): optimizer offload needs ZeRO "
                             "stage 1 or more.")
        if isinstance(config, str):
            try:
                with open(config) as f:
                    config = json.load(f)
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"DeepSpeedStrategy(config={config!r}): cannot read it as JSON ({err}). "
                                 "Pass the path of a readable DeepSpeed JSON config, or the config as a dict.") from None
        self.zero_stage, self.offload_optimizer, self.offload_parameters = zero_stage, offload_optimizer, \
            offload_parameters
        self.user_config: dict[str, Any] = dict(cast("dict[str, Any] | None", config) or {})  # a path was read above
        self.gradient_clip_val: float | None = None
        self.accumulate_grad_batches = 1
        self.engine: Any = None
        self._module: torch.nn.Module | None = None

    @property
    def root_device(self) -> torch.device:
        return self.processes.root_device

    def check_precision(self, precision: Precision) -> None:
        if precision.name not in _DS_PRECISION:
            raise ValueError(f"DeepSpeedStrategy(precision={precision.name!r}): expected '32-true', 'bf16-mixed' "
                             "or '16-mixed' (DeepSpeed keeps fp32 master weights itself).")

    def connect(self, *, gradient_clip_val: float | None = None, gradient_clip_algorithm: str = "norm",
                accumulate_grad_batches: int = 1) -> None:
        """Take the loop's settings that DeepSpeed's config must carry."""
        self.gradient_clip_val = gradient_clip_val
        self.accumulate_grad_batches = accumulate_grad_batches
        if gradient_clip_algorithm != "norm" and gradient_clip_val:
            raise ValueError("Trainer(gradient_clip_algorithm='value') with DeepSpeed: DeepSpeed clips by norm only. "
                             "Use gradient_clip_algorithm='norm'.")

    def ds_config(self) -> dict[str, Any]:
        """The config handed to ``deepspeed.initialize``: the user's, with the Trainer's settings written in."""
        config = json.loads(json.dumps(self.user_config))  # a deep copy
        decided = {"gradient_clipping": float(self.gradient_clip_val or 0.0),  # DeepSpeed would clip at 1.0
                   "gradient_accumulation_steps": 1,   # the loop accumulates (managed_gradient_accumulation off)
                   "train_micro_batch_size_per_gpu": 1}
        for key, value in decided.items():
            given = config.get(key)
            if given is not None and given != value and key != "train_micro_batch_size_per_gpu" \
                    and self.is_global_zero:
                ours = self.accumulate_grad_batches if key == "gradient_accumulation_steps" else value
                warnings.warn(f"DeepSpeed config {key}={given!r} disagrees with the Trainer ({key.split('_')[0]}: "
                              f"{ours!r}); the Trainer's value is used.", stacklevel=3)
            config[key] = value
        config.pop("train_batch_size", None)
        config["managed_gradient_accumulation"] = False
        config["zero_allow_untested_optimizer"] = True  # any torch.optim optimizer from configure_optimizers
        zero = config.setdefault("zero_optimization", {})
        if zero.get("stage", self.zero_stage) != self.zero_stage and self.is_global_zero:
            warnings.warn(f"DeepSpeed config zero_optimization.stage={zero['stage']} disagrees with "
                          f"DeepSpeedStrategy(zero_stage={self.zero_stage}); the strategy's stage is used.", stacklevel=3)
        zero["stage"] = self.zero_stage
        if self.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": self.device_kind == "cuda"}
        if self.offload_parameters:
            zero["offload_param"] = {"device": "cpu", "pin_memory": self.device_kind == "cuda"}
        if _offloads_optimizer(zero):
            # the optimizer from configure_optimizers / prepare() is the user's choice: DeepSpeed would refuse
            # any but its own CPU Adam under offload (see _check_offload_optimizer for the notice)
            config.setdefault("zero_force_ds_cpu_optimizer", False)
        kind = _DS_PRECISION[self.precision.name]
        for section in ("bf16", "fp16"):
            wanted = section == kind
            given = config.get(section, {}).get("enabled")
            if given is not None and bool(given) != wanted and self.is_global_zero:
                warnings.warn(f"DeepSpeed config {section}.enabled={given} disagrees with the Trainer's precision "
                              f"{self.precision.name!r}; the Trainer's precision is used.", stacklevel=3)
            config.setdefault(section, {})["enabled"] = wanted
        return config

    # -- the module and the engine ------------------------------------------------------------------
    def setup_trainer_module(self, module: torch.nn.Module, manual: bool = False) -> tuple[torch.nn.Module, Callable]:
        if manual:
            raise ValueError(
                f"DeepSpeedStrategy with manual optimization ({type(module).__name__}.automatic_optimization = False): "
                "not supported. DeepSpeed's engine is built around one optimizer and owns the backward, the loss "
                "scale, the gradient partitions and the step, so the optimizers of self.optimizers() cannot be "
                "stepped one by one. Use strategy='ddp' or 'fsdp' with manual optimization, or automatic "
                "optimization with DeepSpeed.")
        _require_deepspeed()
        self._module = module.to(self.root_device)
        # the engine is built with the optimizer (setup_optimizer); training_step runs through it
        return module, lambda *args, **kwargs: self.engine("training_step", *args, **kwargs)

    def _check_offload_optimizer(self, optimizer: torch.optim.Optimizer, config: dict[str, Any]) -> None:
        name = type(optimizer).__name__
        if _offloads_optimizer(config["zero_optimization"]) and name not in ("DeepSpeedCPUAdam", "DeepSpeedCPUAdagrad", "DeepSpeedCPULion") \
                and self.is_global_zero:
            warnings.warn(f"DeepSpeed optimizer offload with {type(optimizer).__module__}.{name}: its step runs on "
                          "the CPU as written. For Adam/AdamW, deepspeed.ops.adam.DeepSpeedCPUAdam is much faster "
                          "there (it compiles once, ~1 minute).", stacklevel=4)

    def prepare(self, models: list[torch.nn.Module],
                optimizers: list[torch.optim.Optimizer]) -> tuple[list[torch.nn.Module], list[torch.optim.Optimizer], Driver]:
        """One engine over a model and its optimizer, given together. From the Accelerator: the engine
        over the model itself (``engine(x)`` runs ``model(x)``), returned in the model's place. From the
        Trainer (the module was set up by ``setup_trainer_module``): the optimizer alone. The driver wraps
        the engine, which owns backward, loss scaling, clipping and the step."""
        if not models and not optimizers:
            return [], [], self.driver()
        if not models and self._module is not None and len(optimizers) == 1:  # the Trainer's module, set up
            return [], [self.setup_optimizer(optimizers[0])], self.driver()
        if len(models) != 1 or len(optimizers) != 1:
            names = ", ".join([type(m).__name__ for m in models] + [type(o).__name__ for o in optimizers])
            raise ValueError(f"accelerator.prepare({names}) with DeepSpeed: DeepSpeed builds one engine over a model "
                             "and its optimizer, so pass exactly one model and its optimizer together (got "
                             f"{len(models)} model(s) and {len(optimizers)} optimizer(s)): "
                             "accelerator.prepare(model, optimizer, ...).")
        deepspeed = _require_deepspeed()
        module, optimizer = models[0], optimizers[0]
        self._module = module
        config = self.ds_config()
        self._check_offload_optimizer(optimizer, config)
        self.engine, _, _, _ = _initialize(deepspeed, self.root_device, model=module.to(self.root_device),
                                           optimizer=optimizer, config=config)
        return [self.engine], [optimizer], self.driver()

    def driver(self) -> Driver:
        return DeepSpeedDriver(self.engine, self.precision)

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        deepspeed = _require_deepspeed()
        if self._module is None:
            raise RuntimeError("DeepSpeedStrategy: the module must be set up before its optimizer.")
        config = self.ds_config()
        self._check_offload_optimizer(optimizer, config)
        self.engine, _, _, _ = _initialize(deepspeed, self.root_device, model=StepForward(self._module),
                                           optimizer=optimizer, config=config)
        return optimizer

    def unwrap_module(self, module: torch.nn.Module) -> torch.nn.Module:
        inner = getattr(module, "module", None) if type(module).__name__ == "DeepSpeedEngine" else None
        module = inner if inner is not None else module
        return module.module if isinstance(module, StepForward) else module

    def batch_to_device(self, batch: Any) -> Any:
        batch = super().batch_to_device(batch)
        if self.precision.name in ("bf16-mixed", "16-mixed"):  # the engine holds the weights in half precision
            from .support import apply_to_tensors

            dtype = torch.bfloat16 if self.precision.name == "bf16-mixed" else torch.float16
            batch = apply_to_tensors(batch, lambda t: t.to(dtype) if t.is_floating_point() else t)
        return batch

    @property
    def has_step_contexts(self) -> bool:
        return False  # the engine casts and reduces: both contexts are empty

    def forward_context(self) -> ContextManager:
        return contextlib.nullcontext()  # DeepSpeed casts the weights; no autocast on top

    def no_backward_sync(self, module: torch.nn.Module) -> ContextManager:
        return contextlib.nullcontext()  # backward only accumulates; engine.step() reduces

    refusals = {
        "parameter_averaging": "the engine owns the (possibly partitioned) parameters and reduces the gradients "
                               "itself at its step, so the processes' parameters cannot be averaged beside it.",
        "oom_split": "DeepSpeed scales the loss and keeps the gradients in its engine's partitions, so the loop cannot "
                     "renormalise the extra micro-batches of a split batch or keep their backward free of collectives.",
        "weight_averaging": "the engine owns the (possibly partitioned) parameters and their fp32 master copy, so an "
                            "averaged copy kept beside them would not see the weights the engine steps.",
        "accumulation_schedule": "DeepSpeed's engine is built with a fixed gradient_accumulation_steps (it sets its own "
                                 "loss scaling and step boundaries from it), so the number of micro-batches per step "
                                 "cannot change between epochs.",
        "adding_param_groups": "DeepSpeed's engine builds its own optimizer partitions from the parameter groups it "
                               "was given, so groups cannot be added to it while it runs.",
        "module_backward": "the engine runs the backward itself (its loss scale and ZeRO's gradient partitioning "
                           "hooks), so a backward of the module's own would bypass them.",
    }

    # -- state --------------------------------------------------------------------------------------
    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full weights (gathered from the partitions under ZeRO-3), on every rank, in fp32 on CPU."""
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}

    def local_state_bytes(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Bytes of parameters and optimizer state this rank holds (its partitions)."""
        total = 0
        for p in module.parameters():
            local = getattr(p, "ds_tensor", p)  # ZeRO-3 keeps only this rank's partition
            total += local.numel() * local.element_size()
        zero_opt = self.engine.optimizer
        groups = getattr(zero_opt, "single_partition_of_fp32_groups", None) or \
            getattr(zero_opt, "fp32_partitioned_groups_flat", None) or []
        inner = getattr(zero_opt, "optimizer", zero_opt)
        for flat in groups:
            state = inner.state.get(flat, {})
            total += sum(v.numel() * v.element_size() for k, v in state.items()
                         if isinstance(v, torch.Tensor) and k != "step")
        return total

    @functools.cached_property
    def checkpoint_format(self) -> CheckpointFormat:
        """The engine's own per-rank files (``DeepSpeedFormat``, strategies/checkpoint_format.py)."""
        return DeepSpeedFormat(self)

    def teardown(self) -> None:
        self.engine = None
        super().teardown()

    def __repr__(self) -> str:
        return (f"DeepSpeedStrategy(ZeRO-{self.zero_stage}, {self.processes.backend}, rank {self.global_rank}/{self.world_size}, "
                f"precision={self.precision.name!r})")


class _NoEngine:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("DeepSpeedStrategy has no engine yet: prepare the model and its optimizer together first "
                           "(accelerator.prepare(model, optimizer, ...), or trainer.fit).")


class DeepSpeedDriver(Driver):
    """DeepSpeed's engine, driven: it owns backward, the loss scale, the gradient partitions, clipping
    (at its config's ``gradient_clipping``) and the step, so unscale and clip have nothing to do here.

    Args:
        engine: the ``DeepSpeedEngine`` (None before one is built: each call then says so).
        precision: the strategy's ``Precision``.
    """

    def __init__(self, engine: Any, precision: Precision) -> None:
        super().__init__(precision)
        self.engine = engine if engine is not None else _NoEngine()
        self._warned_window = False

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop already scaled it for its window

    def backward_by(self, backward: Callable[[torch.Tensor], Any], loss: torch.Tensor) -> None:
        raise RuntimeError("DeepSpeed runs the backward in its engine; a module's own backward is refused at fit "
                           "start (DeepSpeedStrategy.refusals['module_backward']).")

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        return None  # the engine unscales inside step()

    def clip_norm(self, parameters: Iterable[torch.nn.Parameter], max_norm: float,
                  norm_type: float = 2.0) -> torch.Tensor:
        return torch.tensor(float("nan"))  # the engine clips at gradient_clipping inside step()

    def clip_value(self, parameters: Iterable[torch.nn.Parameter], clip_value: float) -> None:
        return None

    def step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> StepResult:
        engine = self.engine
        engine.step()
        if engine.was_step_applied():
            return STEPPED
        return StepResult(False, "DeepSpeed's loss scaler found inf/nan gradients and skipped the step")

    def zero_grad(self, optimizer: torch.optim.Optimizer, set_to_none: bool = True) -> None:
        # engine.step() zeroed what it owns; the torch optimizer's own zero_grad would drop the gradient
        # buffers ZeRO-Offload keeps on the CPU partitions between steps
        return None

    def renormalise(self, fix: WindowFix) -> None:
        """The gradients live in the engine's partitions, where they cannot be rescaled: refuse
        ``num_items`` (its mean needs the rescale), warn once about an uneven window."""
        if fix.counted:
            raise ValueError("A step gave num_items, but DeepSpeedStrategy keeps the gradients in its own partitions, "
                             "where they cannot be renormalised by the item count. Return a mean loss instead, or use "
                             "strategy='ddp' or 'fsdp' for item-count normalisation.")
        if not self._warned_window:
            self._warned_window = True
            warnings.warn(f"DeepSpeedStrategy: an accumulation window of {fix.items} samples instead of "
                          f"{fix.expected} (a short last window or uneven batches) is averaged as if it were full. "
                          "Use drop_last=True and a number of batches divisible by the accumulation steps for exact "
                          "averaging.", stacklevel=3)


def _offloads_optimizer(zero_optimization: dict[str, Any]) -> bool:
    """The ZeRO section moves the optimizer state (and its step) to the CPU or NVMe."""
    return zero_optimization.get("offload_optimizer", {}).get("device", "none") != "none"
