"""Helpers under their Accelerate and Lightning names, for hand-written loops."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

from trainer.logs.console import process_rank
from trainer.loops.oom import free_memory, is_oom_error
from trainer.accelerate.operations import (DistributedType, broadcast, broadcast_object_list, gather, gather_object,
                                pad_across_processes, reduce)
from trainer.data.seeding import seed_everything
# Accelerate's names, importable from here as from accelerate.utils (kept out of __all__: the API
# reference documents this library's own helpers; see docs/migrating.md for these)
from trainer.accelerate.plugins import (DataLoaderConfiguration, DeepSpeedPlugin, FullyShardedDataParallelPlugin,  # noqa: F401
                             GradientAccumulationPlugin, ProjectConfiguration)
from trainer.accelerate.helpers import (  # noqa: F401
    LoggerType, PrecisionType, RNGType, clear_environment, compare_versions, convert_bytes,
    extract_model_from_parallel, find_batch_size, get_int_from_env, get_pretty_name, get_torch_accelerator_backend,
    is_aim_available, is_bf16_available, is_clearml_available, is_comet_ml_available, is_cuda_available,
    is_datasets_available, is_deepspeed_available, is_dvclive_available, is_fp8_available, is_fp16_available,
    is_hpu_available, is_matplotlib_available, is_mlflow_available, is_mlu_available, is_mps_available,
    is_musa_available, is_namedtuple, is_neuron_available, is_npu_available, is_pandas_available, is_peft_available,
    is_port_in_use, is_pytest_available, is_rich_available, is_sdaa_available, is_tensorboard_available,
    is_timm_available, is_torch_tensor, is_torch_version, is_torch_xla_available, is_torchdata_available,
    is_torchvision_available, is_transformers_available, is_wandb_available, is_xpu_available, listify, load,
    merge_dicts, parse_choice_from_env, parse_flag_from_env, patch_environment, release_memory, save, send_to_device,
    str_to_bool, synchronize_rng_state, synchronize_rng_states, tqdm, wait_for_everyone)

F = TypeVar("F", bound=Callable[..., Any])


def set_seed(seed: int, deterministic: bool = False) -> int:
    """Seed python, numpy and torch (Accelerate's name for ``seed_everything``).

    Args:
        seed: the seed, also handed to worker processes and seedable samplers.
        deterministic: also turn on torch's deterministic algorithms.

    Returns:
        The seed used.
    """
    from trainer.data.seeding import set_deterministic

    used = seed_everything(seed)
    set_deterministic(deterministic)
    return used


def rank_zero_only(fn: F) -> F:
    """Run ``fn`` only on global rank zero (the rank comes from the launcher's environment);
    other ranks get ``None``. Lightning's decorator by name.

    Example:
        >>> @rank_zero_only
        ... def report(text): print(text)
    """

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if process_rank() == 0:
            return fn(*args, **kwargs)
        return None

    return wrapped  # type: ignore[return-value]


def find_executable_batch_size(function: Callable | None = None, starting_batch_size: int = 128,
                               reduce_batch_size_fn: Callable[[int], int] | None = None) -> Callable:
    """Accelerate's decorator: call ``function(batch_size, *args, **kwargs)`` with
    ``starting_batch_size``; after an out-of-memory error, free memory and retry with the batch
    size halved (or ``reduce_batch_size_fn(batch_size)``), until it runs or the size reaches 0.

    The wrapped function takes the batch size as its first argument; callers leave it out.

    Example:
        >>> @find_executable_batch_size(starting_batch_size=128)
        ... def train(batch_size, model):
        ...     ...                                      # build the dataloader with batch_size
        >>> train(model)  # doctest: +SKIP
    """
    if function is None:
        return functools.partial(find_executable_batch_size, starting_batch_size=starting_batch_size,
                                 reduce_batch_size_fn=reduce_batch_size_fn)
    if not isinstance(starting_batch_size, int) or isinstance(starting_batch_size, bool) or starting_batch_size < 1:
        raise ValueError(f"find_executable_batch_size(starting_batch_size={starting_batch_size!r}): expected a "
                         "positive int.")
    reduce = reduce_batch_size_fn or (lambda size: size // 2)

    @functools.wraps(function)
    def decorator(*args: Any, **kwargs: Any) -> Any:
        batch_size = starting_batch_size
        params = list(inspect.signature(function).parameters)
        if len(params) < len(args) + 1:
            shown = ", ".join(f"{name}={value!r}" for name, value in zip(params[1:], args))
            raise TypeError(f"find_executable_batch_size passes the batch size as {function.__name__}'s first "
                            f"argument; call {function.__name__}({shown}) without it, got {len(args)} positional "
                            f"argument(s) for {len(params)} parameter(s) {params}.")
        free_memory()
        while True:
            if batch_size <= 0:
                raise RuntimeError(f"find_executable_batch_size: {function.__name__} ran out of memory down to a "
                                   f"batch size of 1 (started at {starting_batch_size}). Reduce the model's "
                                   "memory (precision='bf16-mixed', activation checkpointing, a sharded strategy) "
                                   "or free memory held outside the function.")
            try:
                return function(batch_size, *args, **kwargs)
            except Exception as err:  # noqa: BLE001 - only out-of-memory errors are retried
                if not is_oom_error(err):
                    raise
            free_memory()  # outside the except block: the traceback no longer holds the failed step's tensors
            batch_size = reduce(batch_size)

    return decorator


def load_checkpoint_in_model(model: Any, checkpoint: str, strict: bool = False, **options: Any) -> None:
    """Load weights that ``Accelerator.save_model`` wrote into ``model`` (Accelerate's name): a
    directory (``model.safetensors``, or shards with their index) or one ``.safetensors`` file.

    Args:
        model: the ``nn.Module`` to load into (in place).
        checkpoint: the directory ``save_model`` wrote, or the path of one ``.safetensors`` file.
        strict: missing, unexpected or mis-shaped keys are an error instead of a warning.
        **options: Accelerate's ``device_map``, ``offload_folder``, ``dtype``, ...: refused by name.

    As in Accelerate, ``strict=False`` loads the matching keys; here the missing, unexpected and
    mis-shaped ones are named in a warning (``strict=True``: an error). Pickle files are not read.

    Example:
        >>> accelerator.save_model(accelerator.unwrap_model(model), "final_model")
        >>> load_checkpoint_in_model(fresh_model, "final_model")
    """
    import os

    from trainer.persistence.trainer_checkpoint import load_weights_into
    from trainer.strategies.safetensors_weights import load_weights

    if options:
        raise TypeError(f"load_checkpoint_in_model(model, {checkpoint!r}, {', '.join(f'{k}=...' for k in options)}): "
                        "device maps, offloading and dtype casts are not supported; the weights load on the model's "
                        "own devices and dtypes. Drop those arguments (cast the model with .to() first if needed).")
    if os.path.isdir(checkpoint):
        state = load_weights(checkpoint)
    elif os.path.isfile(checkpoint) and checkpoint.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(checkpoint)
    else:
        what = "a file that is not .safetensors" if os.path.isfile(checkpoint) else "nothing there"
        raise FileNotFoundError(f"load_checkpoint_in_model(model, {checkpoint!r}): found {what}; expected the "
                                "directory Accelerator.save_model wrote or a .safetensors file (pickled .bin/.pt "
                                "files are not read: they can carry code).")
    load_weights_into(model, state, checkpoint, strict=strict, non_strict_fix="pass strict=False")


__all__ = ["DistributedType", "broadcast", "broadcast_object_list", "find_executable_batch_size", "gather",
           "gather_object", "load_checkpoint_in_model", "pad_across_processes", "rank_zero_only", "reduce",
           "seed_everything", "set_seed"]
