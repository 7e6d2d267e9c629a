"""`[include] files = conf.d/*.ini other.ini`: gathering the sections of included files.

The included files' `[program:]` and `[group:]` sections are read as if they were in the main
file; each section remembers the file that holds it, so an error names that file and
`%(here)s` is that file's folder. The globs are matched again at every load, so `reload` sees
files added and removed. Included files may include others; a loop is an error. A glob that
matches nothing is a warning, as in supervisor.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from typing import Any

from gsuper.expand import ExpansionError, expand

INCLUDED_KINDS = ("program", "group")


class IncludeError(ValueError):
    """An include that cannot be followed; the text is one sentence naming the file."""


def gather(path: str, parse: Callable[[str], Any], split: Callable[[str], str]) -> tuple[Any, dict[str, str], list[str]]:
    """Parse the main file and every file it includes, merged into the main file's ConfigObj.

    `parse(path)` reads one file into a ConfigObj (raising the caller's own error); `split`
    unquotes a value. Returns the merged ConfigObj (without its [include] section), the file
    of each section, and the warnings.
    """
    main = parse(path)
    origin = {section: path for section in main.sections}
    warnings: list[str] = []
    for included in _includes(path, main, split, warnings, [os.path.realpath(path)], parse):
        inc_path, inc = included
        for section in inc.sections:
            if section in origin:
                raise IncludeError(f"{inc_path}: [{section}] is already in {origin[section]}")
            main[section] = inc[section].dict()
            origin[section] = inc_path
    if "include" in main.sections:
        del main["include"]
        del origin["include"]
    return main, origin, warnings


def _includes(
    path: str, raw: Any, split: Callable[[str], str], warnings: list[str], stack: list[str], parse: Callable[[str], Any]
) -> list[tuple[str, Any]]:
    """The (path, ConfigObj) of every file `raw` includes, depth first, in glob order."""
    if "include" not in raw.sections:
        return []
    section = raw["include"]
    for key in section.scalars:
        if key != "files":
            raise IncludeError(f"{path}: [include] {key}: unknown key (an [include] has only files)")
    text = section.get("files")
    if not isinstance(text, str) or not split(text).strip():
        raise IncludeError(f"{path}: [include] files: a value is required")
    here = os.path.dirname(path)
    try:
        patterns = expand(split(text), {"here": here}, os.environ).split()
    except ExpansionError as exc:
        raise IncludeError(f"{path}: [include] files: {exc}") from None
    found: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for pattern in patterns:
        full = os.path.join(here, os.path.expanduser(pattern))
        matches = sorted(m for m in glob.glob(full) if os.path.isfile(m))
        if not matches:
            warnings.append(f"{path}: [include] files: {pattern} matches no file")
        for match in matches:
            match = os.path.abspath(match)
            real = os.path.realpath(match)
            if real in stack:
                raise IncludeError(f"{path}: [include] files: {match} is a file that includes this one (an include loop)")
            if real in seen:
                continue
            seen.add(real)
            inc = parse(match)
            for name in inc.sections:
                kind = name.partition(":")[0]
                if kind not in INCLUDED_KINDS and name != "include":
                    raise IncludeError(
                        f"{match}: [{name}]: an included file holds only [program:NAME], [group:NAME] and [include] sections"
                    )
            nested = _includes(match, inc, split, warnings, [*stack, real], parse)
            if "include" in inc.sections:
                del inc["include"]
            found.append((match, inc))
            found.extend(nested)
    return found
