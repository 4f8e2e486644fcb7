"""Atomic file writes, and the removal of what killed writes left behind.

A file is written under a temporary name beside its target, fsynced, renamed over the
target (the directory fsynced after), so a crash at any instant leaves the old file or the
new one. The temporary file is locked with `fcntl.flock` while it is written: a lock dies
with its process, so a later save can tell the leftovers of a killed save (unlocked) from
the files of one still running (locked), and remove only the former.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["atomic_file", "fsync_directory", "lock_if_unused", "remove_if_stale", "remove_stale_temps", "temp_names"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, clean: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    The temporary file is locked (`fcntl.flock`) from its creation until it is renamed, so
    stale ones, left by a save that was killed, can be told from those of a save still
    running: before creating its own, a save removes the stale ones of the same target
    (`remove_stale_temps`; ``clean=False`` skips that, for a target no save wrote before).
    The lock is on the open file, so a caller that keeps a duplicate of ``f.fileno()``
    holds it on the renamed file until that closes.

    On any failure the temporary file is removed and `path` is untouched.
    """
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    if clean:
        remove_stale_temps(target)
    fd, tmp = _create_beside(target)
    try:
        with os.fdopen(fd, "w+b", buffering=1 << 20) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, target)  # still locked: no other save may take it for a leftover
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


#: Hex digits of the token that makes each temporary name unique.
_TOKEN_HEX = 12
#: A temporary name adds ``.`` before and ``.<token>.tmp`` after the visible part of the target's.
_TEMP_EXTRA = len(".") + len(".") + _TOKEN_HEX + len(".tmp")
#: An empty temporary file younger than this may belong to a save that has created it but
#: not yet locked it, so it is never taken for a leftover.
_FRESH_SECONDS = 60.0


def _visible(target: str) -> str:
    """The part of `target`'s file name that its temporary names show.

    The whole name when the temporary name fits the directory's name length limit
    (``NAME_MAX``, 255 bytes on most file systems), else the longest prefix (whole
    characters) that does.
    """
    directory, name = os.path.split(target)
    try:
        name_max = os.pathconf(directory or ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    raw = os.fsencode(name)
    room = max(name_max - _TEMP_EXTRA, 1)
    if len(raw) <= room:
        return name
    return os.fsdecode(raw[:room].decode("utf-8", "ignore").encode("utf-8"))


def temp_names(target: str) -> re.Pattern[str]:
    """The pattern of the temporary names `atomic_file` gives files written to `target`."""
    return re.compile(rf"\.{re.escape(_visible(target))}\.[0-9a-f]{{{_TOKEN_HEX}}}\.tmp")


def remove_stale_temps(target: str) -> None:
    """Remove the temporary files of earlier saves to `target` that no running save holds."""
    directory = os.path.dirname(target)
    pattern = temp_names(target)
    try:
        names = [name for name in os.listdir(directory) if pattern.fullmatch(name)]
    except OSError:
        return
    for name in names:
        remove_if_stale(os.path.join(directory, name))


def lock_if_unused(path: str) -> int | None:
    """An open descriptor of the regular file `path`, holding its `fcntl.flock`, or None.

    None when a running save holds the lock (or the file is gone, or is not a regular
    file: a link is never followed).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def remove_if_stale(path: str) -> bool:
    """Remove a file a save wrote if no running save holds its lock; whether it was removed."""
    fd = lock_if_unused(path)
    if fd is None:
        return False
    try:
        st = os.fstat(fd)
        if st.st_size == 0 and time.time() - st.st_mtime < _FRESH_SECONDS:
            return False
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _create_beside(target: str) -> tuple[int, str]:
    """A new, locked temporary file in `target`'s directory with the permissions a plain save would get.

    Mode 0o666 lets the umask apply, as for any new file (``tempfile.mkstemp`` would give
    0o600); a save over an existing file keeps that file's mode.
    """
    directory = os.path.dirname(target)
    visible = _visible(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{visible}.{secrets.token_hex(_TOKEN_HEX // 2)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if mode is not None:
                os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        return fd, tmp
    raise FileExistsError(f"no free temporary name beside {target}")


def fsync_directory(directory: str) -> None:
    """Make the names created in or removed from `directory` durable (where directories can be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
