"""Accelerate's small helpers from ``accelerate.utils``, for scripts that import them: availability
checks, environment parsing, random-state synchronisation, ``save``, ``send_to_device`` and the
enums. Importable from ``trainer.utils``; the names Accelerate has and this library does not are
listed, each with its reason, in ``tests/trainer/accelerator/test_accelerate_names.py``."""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import os
from typing import Any, Callable, Iterator

import torch

from trainer.strategies.support import apply_to_tensors


# -- enums -----------------------------------------------------------------------------------------
class RNGType(str, enum.Enum):
    """Random generators ``synchronize_rng_states`` can align (the ones this library has)."""

    TORCH = "torch"
    CUDA = "cuda"
    GENERATOR = "generator"


class PrecisionType(str, enum.Enum):
    """Accelerate's ``mixed_precision`` values."""

    NO = "no"
    FP8 = "fp8"
    FP16 = "fp16"
    BF16 = "bf16"


class LoggerType(str, enum.Enum):
    """Tracker names ``Accelerator(log_with=...)`` takes."""

    ALL = "all"
    TENSORBOARD = "tensorboard"
    WANDB = "wandb"
    MLFLOW = "mlflow"
    CSV = "csv"


# -- availability ----------------------------------------------------------------------------------
def _has(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def is_cuda_available() -> bool:
    return torch.cuda.is_available()


def is_mps_available(min_version: str = "1.12") -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def is_xpu_available(check_device: bool = False) -> bool:
    return bool(getattr(torch, "xpu", None)) and torch.xpu.is_available()


def _never(*args: Any, **kwargs: Any) -> bool:
    """Hardware this library does not drive (HPU, NPU, MLU, MUSA, SDAA, Neuron, TPU/XLA): False."""
    return False


is_hpu_available = is_npu_available = is_mlu_available = is_musa_available = is_sdaa_available = _never
is_neuron_available = is_torch_xla_available = _never


def is_bf16_available(ignore_tpu: bool = False) -> bool:
    """bfloat16 autocast works here: on CPU always, on CUDA when the GPU supports it."""
    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True


def is_fp16_available() -> bool:
    return True


def is_fp8_available() -> bool:
    return False


def _package_check(package: str) -> Callable[[], bool]:
    def check() -> bool:
        return _has(package)

    check.__name__ = f"is_{package}_available"
    check.__doc__ = f"Whether the ``{package}`` package can be imported (without importing it)."
    return check


is_datasets_available = _package_check("datasets")
is_transformers_available = _package_check("transformers")
is_tensorboard_available = _package_check("tensorboard")
is_wandb_available = _package_check("wandb")
is_mlflow_available = _package_check("mlflow")
is_deepspeed_available = _package_check("deepspeed")
is_pytest_available = _package_check("pytest")
is_rich_available = _package_check("rich")
is_pandas_available = _package_check("pandas")
is_matplotlib_available = _package_check("matplotlib")
is_peft_available = _package_check("peft")
is_timm_available = _package_check("timm")
is_torchvision_available = _package_check("torchvision")
is_torchdata_available = _package_check("torchdata")
is_comet_ml_available = _package_check("comet_ml")
is_aim_available = _package_check("aim")
is_clearml_available = _package_check("clearml")
is_dvclive_available = _package_check("dvclive")
is_safetensors_available = _package_check("safetensors")


def get_torch_accelerator_backend() -> tuple[str | None, Any]:
    """``(device type, torch module)`` of the accelerator in use: ("cuda", torch.cuda), ("mps",
    torch.mps), or (None, None) on CPU."""
    if torch.cuda.is_available():
        return "cuda", torch.cuda
    if is_mps_available():
        return "mps", torch.mps
    return None, None


# -- environment -----------------------------------------------------------------------------------
def str_to_bool(value: str) -> int:
    """1 for "y/yes/t/true/on/1", 0 for "n/no/f/false/off/0" (any case); else a ValueError."""
    lowered = str(value).lower()
    if lowered in ("y", "yes", "t", "true", "on", "1"):
        return 1
    if lowered in ("n", "no", "f", "false", "off", "0"):
        return 0
    raise ValueError(f"str_to_bool({value!r}): expected one of y/yes/t/true/on/1 or n/no/f/false/off/0.")


def parse_flag_from_env(key: str, default: bool = False) -> bool:
    """The environment variable ``key`` read as a yes/no flag (``default`` when unset)."""
    value = os.environ.get(key, str(default))
    return str_to_bool(value) == 1


def parse_choice_from_env(key: str, default: str = "no") -> str:
    return os.environ.get(key, str(default))


def get_int_from_env(env_keys: list[str], default: int) -> int:
    """The first of ``env_keys`` set to a non-negative int, else ``default``."""
    for key in env_keys:
        value = int(os.environ.get(key, -1))
        if value >= 0:
            return value
    return default


@contextlib.contextmanager
def patch_environment(**kwargs: Any) -> Iterator[None]:
    """Set environment variables (upper-cased names) inside the block; the old values come back after."""
    saved = {}
    for key, value in kwargs.items():
        key = key.upper()
        saved[key] = os.environ.get(key)
        os.environ[key] = str(value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def clear_environment() -> Iterator[None]:
    """An empty environment inside the block; the old one comes back after."""
    saved = dict(os.environ)
    os.environ.clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def is_port_in_use(port: int | None = None) -> bool:
    """Whether something listens on ``port`` (default 29500) of localhost."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("localhost", 29500 if port is None else int(port))) == 0


# -- processes -------------------------------------------------------------------------------------
def wait_for_everyone() -> None:
    """A barrier over every process of the default group (nothing without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def synchronize_rng_state(rng_type: str | RNGType | None = None, generator: torch.Generator | None = None) -> None:
    """Give every process process 0's state of one random generator: "torch" (the CPU default),
    "cuda", or "generator" (the ``generator`` passed)."""
    import torch.distributed as dist

    kind = RNGType(rng_type) if rng_type is not None else RNGType.TORCH
    get: Callable[[], torch.Tensor]
    put: Callable[[torch.Tensor], Any]
    if kind == RNGType.TORCH:
        get, put = torch.get_rng_state, torch.set_rng_state
    elif kind == RNGType.CUDA:
        if not torch.cuda.is_available():
            return
        get, put = torch.cuda.get_rng_state, torch.cuda.set_rng_state
    else:
        if generator is None:
            raise ValueError("synchronize_rng_state('generator'): pass the generator to align, generator=...")
        get, put = generator.get_state, generator.set_state
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    box = [get()]
    dist.broadcast_object_list(box, src=0)
    put(box[0])


def synchronize_rng_states(rng_types: list[str | RNGType], generator: torch.Generator | None = None) -> None:
    """``synchronize_rng_state`` for each of ``rng_types`` (every process must call it)."""
    for rng_type in rng_types:
        synchronize_rng_state(RNGType(rng_type), generator=generator)


# -- tensors and objects ---------------------------------------------------------------------------
def send_to_device(tensor: Any, device: Any, non_blocking: bool = False, skip_keys: Any = None) -> Any:
    """Move tensors (and nests of dicts, lists, tuples of them; objects with ``.to``) to ``device``;
    the values under ``skip_keys`` of a dict stay where they are."""
    skip = {skip_keys} if isinstance(skip_keys, str) else set(skip_keys or ())
    if isinstance(tensor, dict) and skip:
        return type(tensor)({k: v if k in skip else send_to_device(v, device, non_blocking) for k, v in tensor.items()})
    if not isinstance(tensor, (torch.Tensor, dict, list, tuple)) and callable(getattr(tensor, "to", None)):
        return tensor.to(device, non_blocking=non_blocking)
    return apply_to_tensors(tensor, lambda t: t.to(device, non_blocking=non_blocking))


def extract_model_from_parallel(model: torch.nn.Module, keep_fp32_wrapper: bool = True,
                                keep_torch_compile: bool = True) -> torch.nn.Module:
    """``model`` without its DDP / DataParallel / ``torch.compile`` wrappers (``keep_torch_compile``
    keeps the compiled one; ``keep_fp32_wrapper`` has nothing to unwrap here)."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    if not keep_torch_compile:
        inner = getattr(model, "_orig_mod", None)
        if inner is not None:
            model = extract_model_from_parallel(inner, keep_fp32_wrapper, keep_torch_compile)
    return model


def save(obj: Any, f: Any, save_on_each_node: bool = False, safe_serialization: bool = False) -> None:
    """Write ``obj`` to ``f`` once per job (on the main process): with ``torch.save`` -- readable with
    ``torch.load(f, weights_only=True)`` when ``obj`` holds tensors and plain containers, as a
    state dict does -- or, with ``safe_serialization``, as safetensors (a dict of tensors).
    ``save_on_each_node``: on each machine's first process instead."""
    from trainer.logs.console import process_rank

    rank = int(os.environ.get("LOCAL_RANK", process_rank())) if save_on_each_node else process_rank()
    if rank != 0:
        return
    if safe_serialization:
        from safetensors.torch import save_file

        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise TypeError(f"save(obj, {f!r}, safe_serialization=True): safetensors holds a dict of tensors, got "
                            f"{type(obj).__name__}. Pass a state dict, or safe_serialization=False.")
        tensors = {k: v.detach().contiguous() for k, v in obj.items()}
        # tied weights share storage, which safetensors refuses: write each once as its own copy
        seen: dict[Any, str] = {}
        for key, value in tensors.items():
            ptr = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
            if value.numel() and ptr in seen:
                tensors[key] = value.clone()
            seen[ptr] = key
        save_file(tensors, str(f), metadata={"format": "pt"})
    else:
        torch.save(obj, f)


def load(f: Any, map_location: Any = None, **kwargs: Any) -> Any:
    """``torch.load(f, map_location, weights_only=True)``: tensors and plain containers only (a pickle
    can carry code; pass ``weights_only=False`` explicitly for a trusted file)."""
    kwargs.setdefault("weights_only", True)
    return torch.load(f, map_location=map_location, **kwargs)


def release_memory(*objects: Any) -> list[None]:
    """Drop the references, collect garbage and empty the CUDA cache; returns one None per object
    (``a, b = release_memory(a, b)``)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return [None for _ in objects]


def find_batch_size(data: Any) -> int:
    """The first dimension of the first tensor in a nest of dicts, lists and tuples."""
    if isinstance(data, torch.Tensor):
        return data.shape[0]
    values = data.values() if isinstance(data, dict) else data if isinstance(data, (list, tuple)) else ()
    for value in values:
        try:
            return find_batch_size(value)
        except TypeError:
            continue
    raise TypeError(f"find_batch_size: no tensor found in {type(data).__name__}; expected a tensor or a dict, list "
                    "or tuple holding one.")


def listify(data: Any) -> Any:
    """Tensors (in nests) as Python numbers and lists."""
    if isinstance(data, torch.Tensor):
        return data.tolist()
    if isinstance(data, dict):
        return {k: listify(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(listify(v) for v in data)
    return data


def is_torch_tensor(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor)


def is_namedtuple(data: Any) -> bool:
    return isinstance(data, tuple) and hasattr(data, "_asdict") and hasattr(data, "_fields")


def get_pretty_name(obj: Any) -> str:
    """The class or function name of ``obj``."""
    if not hasattr(obj, "__qualname__") and not hasattr(obj, "__name__"):
        obj = getattr(obj, "__class__", obj)
    return getattr(obj, "__qualname__", getattr(obj, "__name__", str(obj)))


def merge_dicts(source: dict, destination: dict) -> dict:
    """``source`` merged into ``destination`` (nested dicts merged key by key); returns ``destination``."""
    for key, value in source.items():
        if isinstance(value, dict):
            merge_dicts(value, destination.setdefault(key, {}))
        else:
            destination[key] = value
    return destination


def compare_versions(library_or_version: Any, operation: str, requirement_version: str) -> bool:
    """``version(library_or_version) <operation> requirement_version`` (operation: "<", "<=", "==",
    "!=", ">=", ">"); a library name is looked up among the installed packages."""
    import importlib.metadata
    import operator

    from packaging.version import parse

    ops = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">=": operator.ge,
           ">": operator.gt}
    if operation not in ops:
        raise ValueError(f"compare_versions(operation={operation!r}): expected one of {', '.join(ops)}.")
    version = library_or_version
    if isinstance(version, str) and not version[:1].isdigit():
        version = importlib.metadata.version(version)
    return ops[operation](parse(str(version)), parse(requirement_version))


def is_torch_version(operation: str, version: str) -> bool:
    """``torch.__version__ <operation> version``."""
    return compare_versions(torch.__version__, operation, version)


def tqdm(*args: Any, main_process_only: bool = True, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm`` shown on the main process only (``disable`` elsewhere)."""
    from tqdm.auto import tqdm as _tqdm

    from trainer.logs.console import process_rank

    if main_process_only:
        kwargs["disable"] = kwargs.get("disable", False) or process_rank() != 0
    return _tqdm(*args, **kwargs)


def convert_bytes(size: float) -> str:
    """``size`` bytes as a short human string ("1.5 MB")."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024.0 or unit == "TB":
            return f"{round(size, 2)} {unit}"
        size /= 1024.0
    return f"{size} TB"

