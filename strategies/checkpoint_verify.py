"""Checking a sharded checkpoint before anyone reads it: no file may unpickle code, and every file
must be the one that was written.

torch.distributed.checkpoint unpickles ``.metadata`` with plain ``pickle`` and the non-tensor items
of its ``.distcp`` files with ``torch.load(weights_only=False)``; DeepSpeed (and its zero_to_fp32)
loads its ``.pt`` files with ``weights_only=False``. A pickle can name any Python callable, which
the loader then calls. So before a sharded checkpoint is read, every pickle in it is walked with
an unpickler that builds nothing real: each global it names must be on an allow-list (tensors,
containers, plain values and the handful of classes DCP and DeepSpeed write), or the load is
refused with ``UnsafeCheckpointError`` naming the file and the global. DCP is also given a reader
(``SafeFileSystemReader``) that reads ``.metadata`` with the restricted unpickler and non-tensor
items with ``weights_only=True``, so for FSDP nothing is left to a second read of the file.

``file_manifest`` records every file's size and CRC-32 at save time (in ``meta.ckpt``);
``check_manifest`` compares them before a load, so a truncated or damaged shard is reported as
corrupt (and ``ckpt_path="last"`` falls back to an older checkpoint) instead of failing inside
torch on some ranks.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
import zlib
from typing import Any, Iterable, cast

from .checkpoint_errors import CorruptCheckpointError, UnsafeCheckpointError
from .checkpoint_links import checkpoint_directory

_TORCH_DATA = {  # used when torch's own weights_only allow-list cannot be read
    "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "torch.Size", "torch.serialization._get_layout", "builtins.set", "builtins.complex", "_codecs.encode",
}
_DCP_METADATA = {
    "torch.distributed.checkpoint.metadata." + n for n in (
        "Metadata", "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {"torch.distributed.checkpoint.filesystem._StorageInfo", "pathlib.PosixPath", "pathlib.WindowsPath",
     "pathlib.PurePosixPath", "pathlib.PureWindowsPath", "torch.serialization._get_layout", "torch.Size"}
_DEEPSPEED = {f"deepspeed.runtime.fp16.loss_scaler.{n}" for n in ("LossScaler", "DynamicLossScaler")} | {
    "deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.utils.tensor_fragment.fragment_address",
    "argparse.Namespace",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.save's pre-zip format: five pickles, then raw storage bytes


def torch_data_globals() -> set[str]:
    """The globals ``torch.load(weights_only=True)`` accepts: tensors, storages, dtypes, containers."""
    names = set(_TORCH_DATA)
    try:
        from torch import _weights_only_unpickler as wou

        names |= set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except (ImportError, AttributeError):
        pass
    return names | _dtype_names()


def _dtype_names() -> set[str]:
    import torch

    return {str(v) for v in vars(torch).values() if isinstance(v, torch.dtype)}  # "torch.float32", ...


class _Stub:
    """What every allowed global becomes while a pickle is only checked: it accepts any call or
    state and builds nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Stub":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Stub":
        return _Stub()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def add(self, value: Any) -> None:
        pass


class _Restricted(pickle.Unpickler):
    """An unpickler that refuses every global not in ``allowed``. ``build``: return the real
    objects (for ``.metadata``); otherwise only walk the pickle, with stubs."""

    def __init__(self, file: Any, allowed: set[str], where: str, build: bool = False) -> None:
        super().__init__(file)
        self._allowed, self._where, self._build = allowed, where, build

    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" not in self._allowed:
            raise UnsafeCheckpointError(
                f"Refusing to load {self._where!r}: it contains a pickled Python object (the global {module}.{name}), "
                "which is not a tensor, a container, a plain value or a class this checkpoint format writes. Loading "
                "it would run code from the file. Use a checkpoint you wrote yourself; if you trust this one, load "
                "it with its own tools and save it again.")
        return super().find_class(module, name) if self._build else _Stub

    def persistent_load(self, pid: Any) -> Any:
        if self._build:
            raise pickle.UnpicklingError("a plain pickle cannot refer to tensor storage")
        return _Stub()


def _corrupt(where: str, err: BaseException) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"Checkpoint file {where!r} is truncated or damaged ({type(err).__name__}: "
                                  f"{str(err)[:160]}). Use an earlier checkpoint.")


def _walk(stream: Any, allowed: set[str], where: str, build: bool = False) -> Any:
    try:
        return _Restricted(stream, allowed, where, build).load()
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 -- whatever a damaged pickle raises
        raise _corrupt(where, err) from None


def scan_torch_file(stream: Any, allowed: set[str], where: str) -> None:
    """Walk every pickle ``torch.load`` would read from ``stream`` (a seekable binary file)."""
    start = stream.tell()
    head = stream.read(4)
    stream.seek(start)
    if head.startswith(b"PK"):
        try:
            archive = zipfile.ZipFile(stream)
            names = [n for n in archive.namelist() if n.endswith(".pkl")]
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            raise _corrupt(where, err) from None
        if not names:
            raise _corrupt(where, ValueError("a torch archive without data.pkl"))
        for name in names:
            try:
                data = archive.read(name)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as err:
                raise _corrupt(where, err) from None
            _walk(io.BytesIO(data), allowed, where)
        return
    first = _walk(stream, allowed, where)
    if first is _LEGACY_MAGIC or first == _LEGACY_MAGIC:
        for _ in range(4):  # protocol, sys info, the object, its storage keys
            _walk(stream, allowed, where)


def load_restricted(path: str, allowed: set[str]) -> Any:
    """Unpickle a plain pickle file (DCP's ``.metadata``) whose globals must all be in ``allowed``."""
    with open(path, "rb") as f:
        return _walk(f, allowed, path, build=True)


class _Slice(io.RawIOBase):
    """``length`` bytes of ``f`` from ``offset``, as a seekable file of their own."""

    def __init__(self, f: Any, offset: int, length: int) -> None:
        self._f, self._offset, self._length, self._pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._length - self._pos)
        self._f.seek(self._offset + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


# -- per format ---------------------------------------------------------------------------------
def dcp_metadata(path: str) -> Any:
    """DCP's ``.metadata`` of the checkpoint directory ``path``, read with the restricted unpickler."""
    meta_file = os.path.join(path, ".metadata")
    if not os.path.isfile(meta_file):
        raise CorruptCheckpointError(f"{path!r} has no .metadata: its torch.distributed.checkpoint shards are "
                                     "incomplete. Use an earlier checkpoint.")
    return load_restricted(meta_file, _DCP_METADATA | _dtype_names())


def verify_dcp(path: str) -> None:
    """Every pickle a DCP load of ``path`` would read: ``.metadata`` and each item of every ``.distcp``
    (no link in ``path`` may lead out of it: checkpoint_links.py)."""
    path = checkpoint_directory(path)
    metadata = dcp_metadata(path)
    allowed = torch_data_globals()
    by_file: dict[str, list[Any]] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        by_file.setdefault(str(info.relative_path), []).append(info)
    for relative, infos in sorted(by_file.items()):
        file = os.path.normpath(os.path.join(path, relative))
        if os.path.dirname(file) != os.path.normpath(path):
            raise UnsafeCheckpointError(f"Refusing to load {path!r}: its .metadata points outside the checkpoint "
                                        f"directory ({relative!r}).")
        if not os.path.isfile(file):
            raise CorruptCheckpointError(f"Checkpoint file {file!r} is missing. Use an earlier checkpoint.")
        with open(file, "rb") as f:
            for info in infos:
                if getattr(info, "transform_descriptors", None):
                    raise CorruptCheckpointError(f"{file!r} uses DCP stream transforms "
                                                 f"({info.transform_descriptors}), which this version does not read.")
                scan_torch_file(_Slice(f, info.offset, info.length), allowed, file)


def verify_deepspeed(path: str) -> None:
    """Every ``.pt`` file under ``path``: the files DeepSpeed and zero_to_fp32 load with weights_only=False.
    No link in ``path`` may lead out of it (checkpoint_links.py); a linked folder inside it is checked
    where it lies (``os.walk`` lists it, never enters it), a linked file through its link."""
    root_dir = checkpoint_directory(path)
    allowed = torch_data_globals() | _DEEPSPEED
    for root, _, names in sorted(os.walk(root_dir)):
        for name in sorted(names):
            if name.endswith(".pt"):
                file = os.path.join(root, name)
                with open(file, "rb") as f:
                    scan_torch_file(f, allowed, file)


def _safe_bytes(value: io.BytesIO, where: str) -> None:
    import torch

    try:
        torch.load(value, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        name = str(err).split("GLOBAL ", 1)[-1].split(" ", 1)[0] if "GLOBAL " in str(err) else "?"
        raise UnsafeCheckpointError(f"Refusing to load {where!r}: it contains a pickled Python object (the global "
                                    f"{name}). Loading it would run code from the file.") from None
    value.seek(0)


def _reader_class() -> type:
    from torch.distributed.checkpoint import FileSystemReader

    class SafeFileSystemReader(FileSystemReader):
        """DCP's file reader with ``.metadata`` read by the restricted unpickler and non-tensor items
        by ``weights_only=True`` (DCP's default planner would use ``weights_only=False``)."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            if kwargs.get("rank") is not None:
                return super().read_metadata(*args, **kwargs)  # per-rank metadata: we never write it
            metadata = dcp_metadata(str(self.path))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

        def read_data(self, plan: Any, planner: Any) -> Any:
            return super().read_data(plan, cast(Any, _CheckedBytes(planner, self)))  # a proxy of the planner

    return SafeFileSystemReader


class _CheckedBytes:
    """A load planner whose ``load_bytes`` first checks the item with ``weights_only=True``."""

    def __init__(self, planner: Any, reader: Any) -> None:
        self._planner, self._reader = planner, reader

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        info = self._reader.storage_data[read_item.storage_index]
        _safe_bytes(value, os.path.join(str(self._reader.path), str(info.relative_path)))
        self._planner.load_bytes(read_item, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._planner, name)


def safe_dcp_reader(path: str) -> Any:
    """A ``torch.distributed.checkpoint`` storage reader for ``path`` that never unpickles code."""
    return _reader_class()(path)


def safe_dcp_load(state_dict: dict[str, Any], path: str, whole: bool = False) -> None:
    """``dcp.load`` of ``path`` into ``state_dict`` after ``verify_dcp``, through ``SafeFileSystemReader``.
    ``whole``: every tensor of the checkpoint, unsharded, in this one process (``state_dict`` empty,
    as DCP's ``dcp_to_torch_save`` reads it). A failure of ours inside DCP's ``CheckpointException``
    is raised as itself."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    path = checkpoint_directory(path)  # DCP then reads the very files verify_dcp checked
    verify_dcp(path)
    try:
        if whole:
            from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
            from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

            _load_state_dict(state_dict, storage_reader=safe_dcp_reader(path), planner=_EmptyStateDictLoadPlanner(),
                             no_dist=True)
        else:
            dcp.load(state_dict, storage_reader=safe_dcp_reader(path))
    except CheckpointException as err:
        for failure in err.failures.values():
            inner = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(inner, (UnsafeCheckpointError, CorruptCheckpointError)):
                raise inner from None
        raise CorruptCheckpointError(f"Reading the shards of {path!r} failed: {str(err)[:300]}") from err


# -- sizes and checksums ----------------------------------------------------------------------
def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(directory: str) -> Iterable[str]:
    for root, _, names in os.walk(directory):
        for name in names:
            yield os.path.relpath(os.path.join(root, name), directory)


def file_manifest(directory: str, skip: Iterable[str] = ()) -> dict[str, list[int]]:
    """``{relative path: [size, crc32]}`` of every file under ``directory`` (but ``skip``)."""
    skipped = set(skip)
    return {rel: [os.path.getsize(os.path.join(directory, rel)), _crc32(os.path.join(directory, rel))]
            for rel in sorted(_files(directory)) if rel not in skipped}


def check_manifest(directory: str, manifest: dict[str, list[int]], rank: int = 0, world_size: int = 1) -> None:
    """Every file of ``manifest`` is there with its size; the CRC-32 of this rank's share of the
    files (every ``world_size``-th, from ``rank``) matches. Raises ``CorruptCheckpointError``."""
    for i, (rel, (size, crc)) in enumerate(sorted(manifest.items())):
        file = os.path.join(directory, rel)
        if not os.path.isfile(file):
            raise CorruptCheckpointError(f"Checkpoint {directory!r} is incomplete: {rel} is missing. Use an earlier "
                                         "checkpoint.")
        found = os.path.getsize(file)
        if found != size:
            raise CorruptCheckpointError(f"Checkpoint file {file!r} has {found} bytes; {size} were written (it was "
                                         "truncated or changed). Use an earlier checkpoint.")
        if i % world_size == rank and _crc32(file) != crc:
            raise CorruptCheckpointError(f"Checkpoint file {file!r} is damaged: its CRC-32 differs from the one "
                                         "recorded when it was written. Use an earlier checkpoint.")
