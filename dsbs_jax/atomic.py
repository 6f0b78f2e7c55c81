"""Writes that a kill cannot leave half done: a temporary name, then one rename.

Temporary names carry the process id, so two processes writing the same output never share one.
A directory is replaced by exchanging it with its new version in one step (Linux `renameat2`
with RENAME_EXCHANGE), so that at every moment one complete version exists under its name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
from collections.abc import Iterator

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def temporary_name(path: str | os.PathLike) -> str:
    """`<dir>/.<name>.tmp-<pid>`: beside `path` (same filesystem, so a rename is atomic)."""
    path = os.fspath(path)
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}.tmp-{os.getpid()}")


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", encoding: str = "utf-8") -> Iterator:
    """A file opened under a temporary name and renamed onto `path` when the block succeeds.

    On an error (or a kill) `path` keeps its old content and the temporary file is removed
    (a kill leaves it behind, under a name no reader looks at).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename."""
    with open_atomic(path) as f:
        f.write(text)


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths in one step; False where the system cannot (not Linux, old kernel, FS)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def replace_dir(new: str, target: str) -> None:
    """Puts the complete directory `new` at `target`, then removes what was there.

    Where `target` exists the two are exchanged in one step; where the system has no such
    exchange, the old one is renamed aside first (`<target>.old-<pid>`, which `recover_dir`
    puts back if a kill falls between the two renames).
    """
    if not os.path.exists(target):
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)  # `new` now holds the old version
        return
    aside = f"{target}.old-{os.getpid()}"
    os.rename(target, aside)
    os.rename(new, target)
    shutil.rmtree(aside)


def recover_dir(target: str) -> None:
    """Puts back an old version that `replace_dir` left aside when killed between renames."""
    head, tail = os.path.split(os.path.abspath(target))
    if os.path.exists(target) or not os.path.isdir(head):
        return
    asides = sorted(n for n in os.listdir(head) if n.startswith(f"{tail}.old-"))
    if asides:
        os.rename(os.path.join(head, asides[-1]), target)
