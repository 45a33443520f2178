"""Where a checkpoint's files really are: every loader opens (and checks) the path a link leads to,
and no link may lead out of the checkpoint.

A checkpoint is what the user names: one file, or a directory (a sharded checkpoint, an
``Accelerator.save_state`` folder, a folder of safetensors weights). The name itself may be a
symbolic link -- the user chose it -- and is resolved once, here; the loaders then open the
resolved path, so what is checked is what is read.

Inside a checkpoint directory, a link whose target lies outside it is refused by name
(``LinkOutsideCheckpointError``): the loaders of DeepSpeed and torch.distributed.checkpoint open
whatever the directory's names lead to, and a pickle check that walked the directory without
following a linked folder once let DeepSpeed unpickle code through one. Links that stay inside
the checkpoint are followed: their targets are checked where they lie. Our writers never make
links; a copy of a checkpoint made with ``cp -rL`` (or ``rsync -L``) holds its files instead.
"""

from __future__ import annotations

import os

from .checkpoint_errors import UnsafeCheckpointError


class LinkOutsideCheckpointError(UnsafeCheckpointError):
    """A symbolic link inside a checkpoint leads out of it; the checkpoint is not loaded."""


def _inside(real_root: str, real: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _refuse(shown_root: str, link: str, real: str) -> LinkOutsideCheckpointError:
    return LinkOutsideCheckpointError(
        f"Refusing to load {shown_root!r}: {link!r} inside it is a symbolic link to {real!r}, outside the checkpoint. "
        "The loaders would read that file without the checks this checkpoint's own files get, so links that leave "
        "a checkpoint are not followed. Copy the files in instead of linking them (e.g. `cp -rL` the checkpoint to "
        "a new place, or replace the link by a copy of what it points to).")


def real_checkpoint(path: str) -> str:
    """The real path of the checkpoint the user named (its own links followed: the user named them)."""
    return os.path.realpath(str(path))


def file_in(directory: str, name: str, shown: str | None = None) -> str:
    """The real path of ``directory/name``, a file a loader opens by name inside the checkpoint
    ``directory``; ``LinkOutsideCheckpointError`` if a link in that name leads out of it."""
    root = real_checkpoint(directory)
    real = os.path.realpath(os.path.join(root, name))
    if not _inside(root, real):
        raise _refuse(shown or str(directory), os.path.join(str(directory), name), real)
    return real


def checkpoint_directory(path: str, shown: str | None = None) -> str:
    """The real path of the checkpoint directory ``path``, after checking every link in it (at any
    depth) stays inside it; ``LinkOutsideCheckpointError`` names the first that does not. Loaders
    that let a third-party reader (DeepSpeed, DCP) open files by name pass it the returned path."""
    root = real_checkpoint(path)
    for parent, dirs, files in os.walk(root):  # linked folders are listed, never entered
        for name in sorted(dirs) + sorted(files):
            entry = os.path.join(parent, name)
            if os.path.islink(entry):
                real = os.path.realpath(entry)
                if not _inside(root, real):
                    shown_link = os.path.join(str(path), os.path.relpath(entry, root))
                    raise _refuse(shown or str(path), shown_link, real)
    return root
