"""supervisor-style expansions: ``%(program_name)s``, ``%(process_num)02d``, ``%(here)s``,
``%(ENV_NAME)s`` and ``%%``.

Pure: no I/O, no global state, so it is table-tested. Unlike Python's ``%`` operator, a lone
``%`` followed by anything else stays as it is (``relay -a %h:%p`` is a command line users
already have, and it must run unchanged); only ``%%`` and ``%(name)<conversion>`` are special.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# %% or %(name) followed by a printf conversion with optional flags, width and precision.
_TOKEN = re.compile(r"%%|%\(([^()]*)\)([-#0 +]*\d*(?:\.\d+)?[sdiuxXoeEfFgGr])")


class ExpansionError(ValueError):
    """An expansion that cannot be made; the text is one phrase for the user."""


def names_used(text: str) -> set[str]:
    """The `%(name)` expansions a text holds (to tell whether it differs per worker)."""
    return {m.group(1) for m in _TOKEN.finditer(text) if m.group(1) is not None}


def expand(text: str, values: Mapping[str, str | int], env: Mapping[str, str]) -> str:
    """Replace every expansion in `text`.

    `values` holds the named ones (program_name, process_num, here, ...); `ENV_X` comes from
    `env`. Raises ExpansionError naming an unknown name or a conversion that does not fit.
    """
    if "%" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        name, spec = m.group(1), m.group(2)
        if name is None:
            return "%"
        if name in values:
            value: str | int = values[name]
        elif name.startswith("ENV_") and name[4:] in env:
            value = env[name[4:]]
        elif name.startswith("ENV_"):
            raise ExpansionError(f"%({name}){spec[-1]}: the environment variable {name[4:]} is not set")
        else:
            known = ", ".join(f"%({n})s" for n in sorted(values))
            raise ExpansionError(f"%({name}){spec[-1]}: unknown expansion (known: {known}, %(ENV_NAME)s)")
        conversion = spec[-1]
        if conversion in "diuxXoeEfFgG" and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ExpansionError(f"%({name}){conversion}: {value!r} is not a number") from None
        if conversion == "u":  # printf's unsigned; Python's % knows it only as d
            spec = spec[:-1] + "d"
        try:
            return ("%" + spec) % (value,)
        except (TypeError, ValueError) as exc:
            raise ExpansionError(f"%({name}){spec}: {exc}") from None

    return _TOKEN.sub(one, text)
