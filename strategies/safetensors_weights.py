"""Plain weights in the Hugging Face layout, loadable with ``safetensors`` alone.

``save_weights`` writes one ``model.safetensors``, or shards ``model-0000i-of-0000n.safetensors``
under a size limit plus a JSON index ``model.safetensors.index.json``; each file atomically
(``atomic_write``). ``load_weights`` reads either form and refuses an index that names files
outside its directory.
"""

from __future__ import annotations

import json
import os

import torch

from .checkpoint_errors import CheckpointError
from .checkpoint_io import atomic_write
from .checkpoint_links import file_in

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    text = size.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * units[unit])
    raise ValueError(f"max_shard_size={size!r}: expected bytes as an int or a string such as '5GB' or '500MB'.")


def save_weights(state_dict: dict[str, torch.Tensor], directory: str, max_shard_size: int | str = "10GB") -> list[str]:
    """Write ``state_dict`` as safetensors into ``directory``: one ``model.safetensors``, or shards
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json`` when it is larger
    than ``max_shard_size``. Tied tensors are stored once per name. Returns the file names."""
    from safetensors.torch import save_file

    limit = _parse_size(max_shard_size)
    tensors = {}
    seen: set[tuple[int, int | torch.SymInt]] = set()
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        t = t.clone() if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size() else t
        seen.add(key)
        tensors[name] = t
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    os.makedirs(directory, exist_ok=True)
    names = [WEIGHTS_NAME] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        def write(tmp: str, s: dict[str, torch.Tensor] = shard) -> None:
            save_file(s, tmp, metadata={"format": "pt"})
        atomic_write(os.path.join(directory, name), write)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        atomic_write(os.path.join(directory, WEIGHTS_INDEX_NAME),
                     lambda tmp: _write_text(tmp, json.dumps(index, indent=2)))
        names.append(WEIGHTS_INDEX_NAME)
    return names


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def load_weights(directory: str) -> dict[str, torch.Tensor]:
    """Read weights written by ``save_weights`` (single file or sharded with an index). Each file is
    opened where it really is; a link in ``directory`` that leads out of it is refused
    (``LinkOutsideCheckpointError``, checkpoint_links.py)."""
    from safetensors.torch import load_file

    index_path = os.path.join(directory, WEIGHTS_INDEX_NAME)
    if os.path.lexists(index_path):
        with open(file_in(directory, WEIGHTS_INDEX_NAME)) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        outside = [n for n in files if not isinstance(n, str) or os.path.isabs(n) or os.path.dirname(n)
                   or n in (".", "..")]
        if outside:
            raise CheckpointError(f"{index_path!r} names weight files outside its directory ({outside[:3]}); "
                                  "an index written by save_weights names only files beside it. Refusing to read "
                                  "them: check where this index came from.")
    elif os.path.lexists(os.path.join(directory, WEIGHTS_NAME)):
        files = [WEIGHTS_NAME]
    else:
        raise FileNotFoundError(f"No weights in {directory!r}: expected {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}.")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(file_in(directory, name)))
    return state
