"""Reading logs for `gsuper -s tail`: the last lines, then what is appended, across rotation."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import BinaryIO


def last_lines(path: str, count: int) -> bytes:
    """The last `count` lines of the file (b"" when it does not exist)."""
    if count <= 0:
        return b""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            pos = fh.tell()
            data = b""
            while pos > 0 and data.count(b"\n") <= count:
                step = min(65536, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except FileNotFoundError:
        return b""
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:])


def follow(path: str, poll_s: float = 0.1) -> Iterator[bytes]:
    """Yield what is appended to the file, forever; reopen it when it is rotated or replaced.

    Starts at the current end (the caller printed the last lines); a file that appears or
    replaces the old one later is read from its beginning.
    """
    fh = _open(path, at_end=True)
    while True:
        if fh is None:
            fh = _open(path, at_end=False)
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


def _open(path: str, at_end: bool) -> BinaryIO | None:
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return None
    if at_end:
        fh.seek(0, os.SEEK_END)
    return fh
