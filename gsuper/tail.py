"""Reading logs for `gsuper -s tail`: the last lines, then what is appended, across rotation."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import BinaryIO


def last_lines(path: str, count: int) -> bytes:
    """The last `count` lines of the file (b"" when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            return _last_lines(fh, count)
    except FileNotFoundError:
        return b""


def _last_lines(fh: BinaryIO, count: int) -> bytes:
    """The last `count` lines of an open file, which is left positioned at the end they were read to."""
    end = fh.seek(0, os.SEEK_END)
    if count <= 0:
        return b""
    pos, data = end, b""
    while pos > 0 and data.count(b"\n") <= count:
        step = min(65536, pos)
        pos -= step
        fh.seek(pos)
        data = fh.read(step) + data
    fh.seek(end)
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:])


def follow(path: str, lines: int = 0, poll_s: float = 0.1) -> Iterator[bytes]:
    """Yield the last `lines` lines of the file, then what is appended to it, forever; reopen it
    when it is rotated or replaced.

    The last lines and what follows are read from one open file, so that no line written in
    between is lost; a file that appears or replaces the old one later is read from its beginning.
    """
    fh = _open(path)
    if fh is not None:
        backlog = _last_lines(fh, lines)
        if backlog:
            yield backlog
    while True:
        if fh is None:
            fh = _open(path)
        if fh is not None:
            chunk = fh.read(65536)
            if chunk:
                yield chunk
                continue
            try:
                st = os.stat(path)
                replaced = st.st_ino != os.fstat(fh.fileno()).st_ino or st.st_size < fh.tell()
            except FileNotFoundError:
                replaced = False
            if replaced:
                rest = fh.read()  # the last piece written before the rename
                if rest:
                    yield rest
                fh.close()
                fh = None
                continue
        time.sleep(poll_s)


def _open(path: str) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None
