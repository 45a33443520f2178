"""Checkpoint directories: the folder a run saves into, and the checkpoints that are directories.

- ``lock_directory`` / ``unlock_directory``: one writing run per folder (an advisory ``flock``
  the kernel drops when its holder dies); a second live run gets ``DirectoryInUseError``.
- ``clean_temporaries`` / ``is_temporary`` / ``remove_path``: the temporaries a killed writer
  left (those of a process still running are kept), and deleting a file or directory checkpoint.
- ``atomic_directory``: a sharded checkpoint (or ``Accelerator.save_state``) written with the crash
  safety of ``atomic_write``: every process fills one temporary directory, the main process writes
  its marker (``meta.ckpt`` / ``state.ckpt``, with every file's size and CRC-32) last and swaps the
  directory into place (``new_directory`` + ``swap_directory``). A reader never takes a partial
  directory for a whole one; a kill between the swap's two renames is finished or undone by
  ``recover_swaps`` / ``recover_directory`` at the next write or resume. A full disk raises
  ``DiskFullError`` on every rank, the partial directory removed and the previous one whole.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import tempfile
import time
from typing import Any, Callable

from .checkpoint_io import SHARDED_META, TEMP_PREFIX, DiskFullError, atomic_save, fsync_dir, is_disk_full, user_mode


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
            fsync_dir(tmp)
            delay = float(os.environ.get("TRAINER_TEST_SAVE_DELAY", "0") or 0)
            if delay:
                time.sleep(delay)
            swap_directory(tmp, path)
    except BaseException as err:
        written = _tree_bytes(tmp) if tmp is not None and os.path.exists(tmp) else 0
        if is_main and tmp is not None and os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, (KeyboardInterrupt, SystemExit, DiskFullError)) and is_disk_full(err):  # DCP: BaseException
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
    """A fresh temporary directory beside ``path`` to fill and then ``swap_directory`` into place,
    with the mode the user's umask gives a new directory (mkdtemp's is owner-only 0700)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.path.basename(path)}.new.{os.getpid()}.", dir=directory)
    os.chmod(tmp, user_mode(directory=True))
    return tmp


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
    fsync_dir(directory)
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
            fsync_dir(directory)
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
