"""Files the master creates in rundir and logdir, opened without following symlinks.

A root master writing into a folder another user can write to must never be led by a planted
symlink (``log/NAME.log -> /etc/cron.d/x``) into truncating or appending to another file. So:

- every file there is opened with ``O_NOFOLLOW`` (a symlink in the last component is refused
  with ELOOP, never followed);
- a temporary file is created with ``O_CREAT | O_EXCL`` (a planted file or link of that name
  is removed first, never opened) and then renamed over the real name;
- rundir and logdir themselves must be owned by root or by the master's own user, and must
  not be writable by others unless the sticky bit is set (:func:`unsafe_dir`).
"""

from __future__ import annotations

import errno
import os
import stat

# O_NONBLOCK: a FIFO planted under the name must not block the master in open() (it fails with
# ENXIO, or opens and is refused as not a regular file); for a regular file it changes nothing.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def open_append(path: str, mode: int = 0o644) -> int:
    """Open (creating) a log file for appending; raises OSError (ELOOP for a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, mode)
    return _regular(fd, path)


def open_truncate(path: str, mode: int = 0o644) -> int:
    """Open (creating) a file and empty it; raises OSError (ELOOP for a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT | _NOFOLLOW, mode)
    return _regular(fd, path)


def open_rdwr(path: str, mode: int = 0o644) -> int:
    """Open (creating) a file for reading and writing (the pid file); raises OSError."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, mode)
    return _regular(fd, path)


def _regular(fd: int, path: str) -> int:
    # A FIFO or device planted under the name would block or write elsewhere: only a regular file.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    os.set_blocking(fd, True)
    return fd


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: an exclusive new temporary file, then a rename. Raises OSError.

    Whatever is planted at the temporary name (a symlink, a file) is unlinked, never opened;
    rename replaces a symlink at `path` itself, it never writes through it.
    """
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def unsafe_dir(path: str) -> str | None:
    """Why the folder is not safe for the master's files (one sentence naming the fix), or None.

    A folder that does not exist yet is fine: the master creates it, owned by itself.
    """
    try:
        st = os.stat(path)
    except OSError:  # missing (created later), or unusable: the master says why when it tries
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None
    me = os.geteuid()
    if st.st_uid not in (0, me):
        return (
            f"{path} is owned by uid {st.st_uid}, who could plant links the master would write through; "
            f"make it owned by {'root' if me == 0 else f'uid {me}'} (chown {me} {path}) or use another folder"
        )
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        return f"{path} is writable by every user; remove that (chmod o-w {path}) or set the sticky bit (chmod +t {path})"
    return None
