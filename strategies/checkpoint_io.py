"""Writing and reading checkpoint files: atomically, and without unpickling arbitrary objects.

- ``atomic_save``: write to a temporary name in the same directory, flush and fsync, rename
  into place, fsync the directory. A reader sees the old file or the new one, never half.
- ``BackgroundWriter`` / ``snapshot``: the same writes on a background thread, from a copy of
  the state taken when the save was asked for (``ModelCheckpoint(async_save=True)``).
- ``safe_load``: ``torch.load(weights_only=True)``: tensors, containers and primitives only.
  A pickled callable or class is refused with ``UnsafeCheckpointError``; a truncated or
  corrupt file raises ``CorruptCheckpointError``.

Plain safetensors weights (``save_weights`` / ``load_weights``) are in safetensors_weights.py.
"""

from __future__ import annotations

import collections
import os
import platform
import shutil
import pickle
import re
import tempfile
import threading
import time
import zipfile
from typing import Any, Callable

import torch

from .checkpoint_errors import CheckpointError, CorruptCheckpointError, UnsafeCheckpointError  # noqa: F401 (re-export)

TEMP_PREFIX = ".tmp-"




def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, fill: Callable[[str], None]) -> None:
    """Call ``fill(tmp_path)`` to write a temporary file beside ``path``; fsync it and rename it
    into place, then fsync the directory so the rename itself survives a power loss."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.path.basename(path)}.part.{os.getpid()}.", dir=directory)
    os.close(fd)
    try:
        fill(tmp)
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
    _fsync_dir(directory)


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
            torch.save(obj, _WritebackFile(f))

    try:
        atomic_write(path, fill)
    except (OSError, RuntimeError) as err:
        if not _disk_full(err):
            raise
        directory = os.path.dirname(os.path.abspath(path))
        raise DiskFullError(f"No space left on {directory!r} while writing {os.path.basename(path)!r} (about "
                            f"{_nbytes(obj) / 1e6:.1f} MB needed, {shutil.disk_usage(directory).free / 1e6:.1f} MB "
                            "free). Nothing was replaced: the previous checkpoint is whole. Free some space, or save "
                            "to a larger disk (ModelCheckpoint(dirpath=...)).") from err


class DiskFullError(OSError):
    """A checkpoint could not be written: its disk is full (the previous one is untouched)."""


def _disk_full(err: BaseException) -> bool:
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
    if os.path.isdir(path):
        meta = os.path.join(path, SHARDED_META)
        if not os.path.isfile(meta):
            raise CorruptCheckpointError(
                f"Checkpoint {path!r} is a directory without {SHARDED_META}: it is not a whole sharded checkpoint "
                "(its writing was cut short, or it is another kind of directory). Use an earlier checkpoint.")
        path = meta
    try:
        if mmap and os.path.isfile(path):
            from .mapped import load_mapped

            return load_mapped(path, map_location)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err)
        named = re.search(r"GLOBAL ([\w.]+)", detail)
        # no global named (an opcode torch refuses): random bytes fail that way too, so ask ours
        name = named.group(1) if named else _named_global(path)
        if name is not None:
            raise UnsafeCheckpointError(
                f"Refusing to load {path!r}: it contains a pickled Python object (the global {name}). "
                "Loading it would run code from the file, so only tensors, containers and plain values are accepted. "
                "If you trust the file, load it yourself with torch.load(path, weights_only=False) and save its state "
                "dicts again.") from None
        reason = "its pickle data is not valid" if "Weights only load failed" in detail else detail[:200]
        raise CorruptCheckpointError(f"Checkpoint {path!r} is damaged and cannot be read ({reason}). Use an earlier "
                                     "checkpoint.") from None
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 -- whatever a truncated or damaged file makes torch raise
        raise CorruptCheckpointError(
            f"Checkpoint {path!r} is truncated or damaged ({type(err).__name__}: {str(err)[:200]}). It was probably "
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
            return DTensor.from_local(local, obj.device_mesh, obj.placements, run_check=False, shape=obj.shape,
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


class DirectoryInUseError(RuntimeError):
    """Another live process holds the checkpoint directory's lock."""


LOCK_NAME = ".lock"
_held_locks: dict[str, list[Any]] = {}  # realpath -> [open lock file, holders in this process]


def lock_directory(directory: str) -> None:
    """Take the advisory lock (``flock``) of a checkpoint directory for this process, or raise
    ``DirectoryInUseError`` naming the process that holds it. The kernel drops the lock when its
    holder exits, however it ends, so a lock file left by a dead run is not held. Several holders
    in one process (two ModelCheckpoints, one directory) share it; ``unlock_directory`` per holder."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return
    key = os.path.realpath(directory)
    if key in _held_locks:
        _held_locks[key][1] += 1
        return
    os.makedirs(key, exist_ok=True)
    f = open(os.path.join(key, LOCK_NAME), "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        owner = f.read().strip() or "unknown"
        f.close()
        raise DirectoryInUseError(
            f"Checkpoint directory {directory!r} is in use by another run ({owner}), which is still alive and writing "
            "checkpoints there. Two runs in one directory would delete each other's files. Stop that run first (its "
            "workers may outlive a killed launcher: look for that pid), or give this run its own "
            "ModelCheckpoint(dirpath=...) / default_root_dir.") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {platform.node()}")
    f.flush()
    _held_locks[key] = [f, 1]


def unlock_directory(directory: str) -> None:
    key = os.path.realpath(directory)
    held = _held_locks.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _held_locks[key]
        try:  # the directory is left as it was; a run starting this very moment may still take the old file
            os.remove(os.path.join(key, LOCK_NAME))
        except OSError:
            pass
        held[0].close()  # closing the file releases the flock


def is_temporary(name: str) -> bool:
    return os.path.basename(name).startswith(TEMP_PREFIX)


def clean_temporaries(directory: str, only: str | None = None) -> None:
    """Delete the temporary files and directories a killed writer left in ``directory`` (after
    ``recover_swaps``), or only those of the name ``only``; those whose owner (the pid in their
    name) is still running are kept."""
    for name in os.listdir(directory):
        mine = only is None or name.startswith(f"{TEMP_PREFIX}{only}.")
        if mine and is_temporary(name) and not pid_alive(_owner(name)):
            remove_path(os.path.join(directory, name))


def _owner(name: str) -> int:
    """The pid in a temporary name (``.tmp-<name>.<kind>.<pid>.<random>``), or 0 if it has none."""
    match = re.search(r"\.(?:new|old|part)\.(\d+)(?:\.[^.]*)?$", name)
    return int(match.group(1)) if match else 0


def remove_path(path: str) -> None:
    """Delete a checkpoint file, or a sharded checkpoint directory."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


# -- sharded checkpoints (a directory per checkpoint) -------------------------------------------
SHARDED_META = "meta.ckpt"  # written last: a directory without it is not a whole checkpoint


def atomic_directory(path: str, meta: dict[str, Any], fill: Callable[[str], None], is_main: bool = True,
                     broadcast: Callable[[Any], Any] = lambda obj: obj, barrier: Callable[[], None] = lambda: None,
                     marker: str = SHARDED_META) -> None:
    """Write a checkpoint directory with the crash safety of ``atomic_write``: the one directory
    writer, for a strategy's shards and for ``Accelerator.save_state``.

    Every process writes its files into one temporary directory (``fill(tmp)``); once all have
    finished, the main process records every file's size and CRC-32 in ``meta`` and writes it as
    ``marker`` (``meta.ckpt``; ``state.ckpt`` for a one-file Accelerator state) -- last,
    atomically -- and swaps the directory into place (``swap_directory``). A reader never takes a
    partial directory for a whole one: a temporary name is skipped, and a directory without its
    marker is refused; a kill during the swap is undone by ``recover_swaps`` (at the next write
    of ``path`` or the next resume). One process by default; several pass the main process's
    flag and their ``broadcast``/``barrier``.
    """
    from .checkpoint_verify import file_manifest

    if is_main:
        recover_directory(path)  # an earlier write of ``path`` cut short by a kill: finish it first
    tmp = new_directory(path) if is_main else None
    tmp = broadcast(tmp)
    try:
        fill(tmp)
        barrier()
        if is_main:
            meta = {**meta, "files": file_manifest(tmp)}  # sizes and CRC-32s, checked before a load
            atomic_save(meta, os.path.join(tmp, marker))
            _fsync_dir(tmp)
            delay = float(os.environ.get("TRAINER_TEST_SAVE_DELAY", "0") or 0)
            if delay:
                time.sleep(delay)
            swap_directory(tmp, path)
    except BaseException as err:
        written = _tree_bytes(tmp) if tmp is not None and os.path.exists(tmp) else 0
        if is_main and tmp is not None and os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, (KeyboardInterrupt, SystemExit, DiskFullError)) and _disk_full(err):  # DCP: BaseException
            raise _sharded_disk_full(path, written) from err
        raise
    barrier()


def _tree_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(directory) for name in names
               if os.path.exists(os.path.join(root, name)))


def _sharded_disk_full(path: str, written: int) -> DiskFullError:
    """The message for a sharded save that filled its disk. The size needed is that of the newest whole
    checkpoint directory beside it (same state, same size) when there is one; otherwise at least what
    was written before the disk filled."""
    directory = os.path.dirname(os.path.abspath(path))
    whole = [os.path.join(directory, n) for n in os.listdir(directory) if not is_temporary(n)
             and os.path.isfile(os.path.join(directory, n, SHARDED_META))]
    if whole:
        needed = f"about {_tree_bytes(max(whole, key=os.path.getmtime)) / 1e6:.1f} MB needed"
    else:
        needed = f"at least {written / 1e6:.1f} MB needed"
    return DiskFullError(f"No space left on {directory!r} while writing the shards of {os.path.basename(path)!r} "
                         f"({needed}, {shutil.disk_usage(directory).free / 1e6:.1f} MB free). Nothing was replaced: "
                         "the previous checkpoint is whole. Free some space, or save to a larger disk "
                         "(ModelCheckpoint(dirpath=...)).")


def recover_directory(path: str) -> None:
    """Finish (or undo) a swap of the directory ``path`` a kill cut short; remove its dead writers'
    temporaries. Nothing else beside it is touched."""
    parent, name = os.path.split(os.path.abspath(path))
    if os.path.isdir(parent):
        recover_swaps(parent, only=name)
        clean_temporaries(parent, only=name)


# A directory checkpoint is swapped in with two renames (no portable atomic exchange): the old one
# aside to ``.tmp-<name>.old.<pid>``, then the whole new one from ``.tmp-<name>.new.<pid>.<random>``
# to ``<name>``. ``recover_swaps`` finishes (or undoes) a swap a kill cut between the two.
_SWAP = re.compile(r"^\.tmp-(?P<name>.+)\.(?P<kind>new|old)\.(?P<pid>\d+)(?:\.[^.]+)?$")
WHOLE_MARKERS = (SHARDED_META, "state.ckpt")  # written last: a directory with one is whole


def new_directory(path: str) -> str:
    """A fresh temporary directory beside ``path`` to fill and then ``swap_directory`` into place."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.path.basename(path)}.new.{os.getpid()}.", dir=directory)


def swap_directory(tmp: str, path: str) -> None:
    """Put the whole directory ``tmp`` at ``path``; an older ``path`` is deleted once the new one is in."""
    directory = os.path.dirname(os.path.abspath(path))
    old = None
    if os.path.lexists(path):
        old = os.path.join(directory, f"{TEMP_PREFIX}{os.path.basename(path)}.old.{os.getpid()}")
        os.replace(path, old)
        if os.environ.get("TRAINER_TEST_KILL_IN_SWAP"):  # test hook: a kill between the two renames
            os.kill(os.getpid(), 9)
    os.replace(tmp, path)
    _fsync_dir(directory)
    if old is not None:
        remove_path(old)


def _is_whole(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, m)) for m in WHOLE_MARKERS)


def recover_swaps(directory: str, only: str | None = None) -> list[str]:
    """Finish the directory swaps a kill interrupted in ``directory`` (or only for the name ``only``):
    where ``<name>`` is missing, a whole new directory is moved in, else the old one is put back.
    Returns the names recovered. Swaps of processes still running are left alone."""
    if not os.path.isdir(directory):
        return []
    found: dict[str, dict[str, list[str]]] = {}
    for entry in os.listdir(directory):
        match = _SWAP.match(entry)
        if match and (only is None or match["name"] == only) and not pid_alive(int(match["pid"])):
            found.setdefault(match["name"], {}).setdefault(match["kind"], []).append(entry)
    recovered = []
    for name, kinds in found.items():
        target = os.path.join(directory, name)
        if os.path.lexists(target):
            continue
        whole = [os.path.join(directory, e) for k in ("new", "old") for e in kinds.get(k, [])]
        whole = [p for p in whole if _is_whole(p)]
        if whole:  # the newest whole one: a new directory, else the old one
            os.replace(whole[0], target)
            _fsync_dir(directory)
            recovered.append(name)
    return recovered


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a temporary file's owner may still be writing)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
