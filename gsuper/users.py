"""The `user` a worker runs as: looking it up, and checking what it may open.

The master runs as root and checks paths for the worker's user before it spawns anything, so a
folder the user cannot enter is a config error from `check`, not a worker that dies at start.
The check reads the mode bits (owner, group, other) of each folder on the way; ACLs are not
read, so an ACL that grants more is not seen (an ACL that takes away is seen at spawn).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    """A user a worker runs as, with its primary and supplementary groups."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]
    home: str

    def can(self, path: str, mode: int) -> bool:
        """Whether this user may access `path` with `mode` (os.R_OK | os.W_OK | os.X_OK), every
        folder above it searchable too."""
        if self.uid == 0:
            return True
        path = os.path.abspath(path)
        parts = path.split(os.sep)
        for i in range(2, len(parts)):
            if not self._allowed(os.sep.join(parts[:i]) or os.sep, os.X_OK):
                return False
        return self._allowed(path, mode)

    def _allowed(self, path: str, mode: int) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_uid == self.uid:
            bits = (st.st_mode & stat.S_IRWXU) >> 6
        elif st.st_gid == self.gid or st.st_gid in self.groups:
            bits = (st.st_mode & stat.S_IRWXG) >> 3
        else:
            bits = st.st_mode & stat.S_IRWXO
        return bits & mode == mode


def lookup(text: str) -> User:
    """The user named `text` (a name or a uid). Raises LookupError with a phrase for the user."""
    text = text.strip()
    try:
        entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except (KeyError, OverflowError):
        raise LookupError(f"no such user {text!r} on this machine") from None
    try:
        groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = frozenset([entry.pw_gid])
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def group_name(gid: int) -> str:
    """A group's name, or its number when it has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
