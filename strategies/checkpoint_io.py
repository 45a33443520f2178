"""Writing and reading one checkpoint file: atomically, and without unpickling arbitrary objects.

- ``atomic_write`` / ``atomic_save``: write to a temporary name in the same directory, flush and
  fsync, rename into place, fsync the directory. A reader sees the old file or the new one, never
  half. A full disk raises ``DiskFullError`` with the previous file untouched. ``atomic_link``
  gives a whole file a second name the same way, without a second copy.
- ``BackgroundWriter`` / ``snapshot``: the same writes on a background thread, from a copy of
  the state taken when the save was asked for (``ModelCheckpoint(async_save=True)``).
- ``safe_load``: ``torch.load(weights_only=True)``: tensors, containers and primitives only.
  A pickled callable or class is refused with ``UnsafeCheckpointError``; a truncated or
  corrupt file raises ``CorruptCheckpointError``. A sharded checkpoint directory is read through
  its ``SHARDED_META`` file.

Checkpoint directories (their lock, crash recovery, sharded checkpoints) are in
checkpoint_directories.py; plain safetensors weights in safetensors_weights.py.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, cast

import torch

from .checkpoint_errors import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError  # noqa: F401 (re-export)

TEMP_PREFIX = ".tmp-"  # every temporary a writer makes starts with it (checkpoint_directories.is_temporary)
SHARDED_META = "meta.ckpt"  # a sharded checkpoint directory's last-written file (checkpoint_directories.py)


def fsync_dir(directory: str) -> None:
    """fsync ``directory`` itself, so that a rename or a new file in it survives a power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting it,
    which would race with a background writer creating files at the same moment)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS): read it the only other way, and put it back
    os.umask(mask)
    return mask


def user_mode(directory: bool = False) -> int:
    """The mode ``open()`` / ``mkdir()`` would give a new file (0666) or directory (0777) under the
    user's umask. ``mkstemp``/``mkdtemp`` create 0600/0700 whatever the umask; checkpoints and exported
    weights get this mode instead, so teammates and serving jobs can read them (umask 022: 0644)."""
    return (0o777 if directory else 0o666) & ~current_umask()


def atomic_write(path: str, fill: Callable[[str], None]) -> None:
    """Call ``fill(tmp_path)`` to write a temporary file beside ``path``; fsync it and rename it
    into place, then fsync the directory so the rename itself survives a power loss. The file gets
    the mode the user's umask gives a new file (``user_mode``), not mkstemp's owner-only 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.path.basename(path)}.part.{os.getpid()}.", dir=directory)
    os.close(fd)
    try:
        fill(tmp)
        os.chmod(tmp, user_mode())  # after fill: a writer may replace the file (safetensors creates its own)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        delay = float(os.environ.get("TRAINER_TEST_SAVE_DELAY", "0") or 0)
        if delay:  # test hook: widen the window in which a kill lands mid-save
            time.sleep(delay)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(directory)


class _WritebackFile:
    """A file ``torch.save`` writes through that asks the kernel to start writing each 64 MB to disk
    as soon as it is written (``posix_fadvise(DONTNEED)`` starts the writeback without waiting).

    The disk then works while the rest is serialised, so the final fsync waits only for the tail,
    and the page cache never fills up with dirty pages that throttle the writer: a 1.2 GB
    checkpoint is written and fsynced about as fast as a bare ``torch.save`` without any fsync.
    """

    CHUNK = 64 << 20

    def __init__(self, f: Any) -> None:
        self._f, self._pending = f, 0

    def write(self, data: Any) -> int:
        n = self._f.write(data)
        self._pending += n
        if self._pending >= self.CHUNK:
            self._f.flush()
            os.posix_fadvise(self._f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            self._pending = 0
        return n

    def flush(self) -> None:
        self._f.flush()


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temp file, fsync, rename), with the disk writing
    while it is serialised (see ``_WritebackFile``). A full disk is reported as such."""
    def fill(tmp: str) -> None:
        if not hasattr(os, "posix_fadvise"):  # Windows, macOS: torch's own writer, to the path
            torch.save(obj, tmp)
            return
        with open(tmp, "wb") as f:
            torch.save(obj, cast(Any, _WritebackFile(f)))  # file-like: the writes torch.save makes

    try:
        atomic_write(path, fill)
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):
            raise
        directory = os.path.dirname(os.path.abspath(path))
        raise DiskFullError(f"No space left on {directory!r} while writing {os.path.basename(path)!r} (about "
                            f"{_nbytes(obj) / 1e6:.1f} MB needed, {shutil.disk_usage(directory).free / 1e6:.1f} MB "
                            "free). Nothing was replaced: the previous checkpoint is whole. Free some space, or save "
                            "to a larger disk (ModelCheckpoint(dirpath=...)).") from err


class DiskFullError(OSError):
    """A checkpoint could not be written: its disk is full (the previous one is untouched)."""


def is_disk_full(err: BaseException) -> bool:
    """torch's zip writer reports a full disk as ``unexpected pos`` / ``basic_ios::clear``."""
    import errno

    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)
    return any(s in text for s in ("unexpected pos", "basic_ios::clear", "No space left", "file write failed"))


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def safe_load(path: str, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)``, explaining every refusal.

    ``mmap=True``: map the file instead of reading it (see mapped.py); a dict comes back as a
    ``MappedCheckpoint`` whose pages can be dropped once its tensors are copied into the live state."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist. Check the path, or pass ckpt_path='last' to "
                                "resume from the newest checkpoint (or start fresh when there is none).")
    from .checkpoint_links import checkpoint_directory, real_checkpoint

    if os.path.isdir(path):
        opened = os.path.join(checkpoint_directory(path), SHARDED_META)  # no link in it leads out of it
        if not os.path.isfile(opened):
            raise CorruptCheckpointError(
                f"Checkpoint {path!r} is a directory without {SHARDED_META}: it is not a whole sharded checkpoint "
                "(its writing was cut short, or it is another kind of directory). Use an earlier checkpoint.")
        path = os.path.join(path, SHARDED_META)
    else:
        opened = real_checkpoint(path)  # the file a link named by the user leads to: checked and read there
    shown = repr(path) if opened == os.path.abspath(path) else f"{path!r} (a link to {opened!r})"
    try:
        if mmap and os.path.isfile(opened):
            from .mapped import load_mapped

            return load_mapped(opened, map_location)
        return torch.load(opened, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err)
        named = re.search(r"GLOBAL ([\w.]+)", detail)
        # no global named (an opcode torch refuses): random bytes fail that way too, so ask ours
        name = named.group(1) if named else _named_global(opened)
        if name is not None:
            raise UnsafeCheckpointError(
                f"Refusing to load {shown}: it contains a pickled Python object (the global {name}). "
                "Loading it would run code from the file, so only tensors, containers and plain values are accepted. "
                "If you trust the file, load it yourself with torch.load(path, weights_only=False) and save its state "
                "dicts again.") from None
        reason = "its pickle data is not valid" if "Weights only load failed" in detail else detail[:200]
        raise CorruptCheckpointError(f"Checkpoint {shown} is damaged and cannot be read ({reason}). Use an earlier "
                                     "checkpoint.") from None
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 -- whatever a truncated or damaged file makes torch raise
        raise CorruptCheckpointError(
            f"Checkpoint {shown} is truncated or damaged ({type(err).__name__}: {str(err)[:200]}). It was probably "
            "cut short by a crash or an interrupted copy; use an earlier checkpoint.") from None


def _named_global(path: str) -> str | None:
    """The global a file's pickle names that torch's data-only loader refused, if any (else None:
    the file is damaged rather than unsafe)."""
    from .checkpoint_verify import scan_torch_file, torch_data_globals

    try:
        with open(path, "rb") as f:
            scan_torch_file(f, torch_data_globals(), path)
    except UnsafeCheckpointError as err:
        found = re.search(r"the global ([^)]+)\)", str(err))
        return found.group(1) if found else "?"
    except (CorruptCheckpointError, OSError):
        return None
    return None


def atomic_link(src: str, dst: str) -> bool:
    """Make ``dst`` a second name of the whole file ``src`` (a hard link made under a temporary
    name, then renamed into place, and the directory fsynced): no second copy is written. Returns
    False, changing nothing, where that cannot be done (``src`` or ``dst`` a directory, another
    filesystem, one without hard links); the caller then writes ``dst`` itself."""
    if not os.path.isfile(src) or os.path.isdir(dst):
        return False

    def fill(tmp: str) -> None:
        os.remove(tmp)  # the temporary name becomes the link
        os.link(src, tmp)

    try:
        atomic_write(dst, fill)
    except OSError:
        return False
    return True


def snapshot(obj: Any) -> Any:
    """A copy of a checkpoint's content that training can no longer change: every tensor copied
    to the CPU (a DTensor's local shard, keeping its mesh and placements), every container rebuilt
    (plain values are immutable and shared)."""
    if isinstance(obj, torch.Tensor):
        if hasattr(obj, "to_local") and hasattr(obj, "placements"):  # a DTensor: copy the local shard, keep its layout
            from torch.distributed.tensor import DTensor

            local = obj.to_local().detach().to("cpu", copy=True)
            return DTensor.from_local(local, cast(DTensor, obj).device_mesh, obj.placements, run_check=False, shape=obj.shape,
                                      stride=obj.stride())
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        items = [(k, snapshot(v)) for k, v in obj.items()]
        return type(obj)(items) if type(obj) in (dict, collections.OrderedDict) else dict(items)
    if isinstance(obj, list):
        return [snapshot(v) for v in obj]
    if type(obj) is tuple:
        return tuple(snapshot(v) for v in obj)
    return obj


class BackgroundWriter:
    """Runs checkpoint writes on a background thread, one at a time and in order: a new write
    first waits for the one before (so at most one snapshot is held and "last" never goes back in
    time). ``wait()`` blocks until the pending write is done and raises its error, if any. The
    thread is not a daemon: the interpreter finishes a write before it exits."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: tuple[str, BaseException] | None = None

    @property
    def pending(self) -> bool:
        return self._thread is not None

    def submit(self, job: Callable[[], None], what: str) -> None:
        self.wait()

        def run() -> None:
            try:
                job()
            except BaseException as err:  # raised in the training thread by the next wait()
                self._error = (what, err)

        self._thread = threading.Thread(target=run, name="checkpoint-writer", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            (what, err), self._error = self._error, None
            raise RuntimeError(f"Writing the checkpoint {what} in the background failed: {type(err).__name__}: "
                               f"{err}. The checkpoints written before it are whole; fix the cause (disk space, "
                               "permissions) or use ModelCheckpoint(async_save=False) to see it where it happens."
                               ) from err


def non_finite_parameters(module: torch.nn.Module, all_gather: Callable[[Any], list[Any]]) -> list[str]:
    """Names of ``module``'s parameters holding a NaN or an infinity on any process (each checks its
    own shards; one host sync). Checked before a checkpoint is written: one never replaces another
    with weights that cannot train."""
    named = []
    for name, p in module.named_parameters():
        local = p.to_local() if hasattr(p, "to_local") else getattr(p, "ds_tensor", p)  # the shard held here
        if local.numel():
            named.append((name, local.detach()))
    flags = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist() if named else []
    bad = [name for (name, _), ok in zip(named, flags) if not ok]
    return sorted({n for rank_bad in all_gather(bad) for n in rank_bad})
