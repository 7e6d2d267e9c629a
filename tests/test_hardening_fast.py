"""Fast tier of the hardening (issue 9): request parsing and type checks, the no-follow file
helpers, the folder check, and the configuration's cut-value detection; no process started."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gsuper import config, fsafe
from gsuper.commands import check_types
from gsuper.control import parse_request


@pytest.mark.parametrize(
    ("line", "ok", "words"),
    [
        (b'{"cmd": "ping"}', True, ""),
        (b'{"cmd": "stop", "timeout": NaN}', False, "expected a JSON object"),
        (b'{"cmd": "stop", "timeout": Infinity}', False, "expected a JSON object"),
        (b'{"cmd": "status", "x": [[[[["deep"]]]]]}', False, "nested deeper than 4"),
        (b"[" * 100000, False, "nested deeper"),
        (b'["cmd"]', False, "expected a JSON object"),
        (b'{"cmd": 3}', False, "expected a JSON object"),
    ],
)
def test_parse_request(line: bytes, ok: bool, words: str) -> None:
    request, problem = parse_request(line)
    assert (request is not None) is ok
    assert words in problem


@pytest.mark.parametrize(
    ("req", "problem"),
    [
        ({"cmd": "scale", "numprocs": 3}, None),
        ({"cmd": "scale", "numprocs": True}, "numprocs must be a whole number"),
        ({"cmd": "scale", "numprocs": 2.0}, "numprocs must be a whole number"),
        ({"cmd": "stop", "timeout": None}, None),
        ({"cmd": "stop", "timeout": 2.5}, None),
        ({"cmd": "stop", "timeout": 1e400}, "timeout must be"),
        ({"cmd": "stop", "timeout": False}, "timeout must be"),
        ({"cmd": "stop", "timeout": -1}, "timeout must be"),
        ({"cmd": "restart", "rolling": "yes"}, "rolling must be true or false"),
        ({"cmd": "status", "rss": 0}, "rss must be true or false"),
        ({"cmd": "scale", "program": ["a"]}, "program must be a name"),
    ],
)
def test_check_types(req: dict, problem: str | None) -> None:
    found = check_types(req)
    assert found == problem if problem is None else (found is not None and problem in found)


def test_no_follow_helpers_refuse_links_and_replace_planted_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("precious")
    link = tmp_path / "link.log"
    link.symlink_to(target)
    for opener in (fsafe.open_append, fsafe.open_truncate, fsafe.open_rdwr):
        with pytest.raises(OSError) as info:
            opener(str(link))
        assert info.value.errno == errno.ELOOP
    (tmp_path / "rec.json.tmp").symlink_to(target)
    fsafe.write_atomic(str(tmp_path / "rec.json"), b"{}")
    assert (tmp_path / "rec.json").read_text() == "{}" and target.read_text() == "precious"
    os.mkfifo(tmp_path / "fifo.log")
    for opener in (fsafe.open_append, fsafe.open_rdwr):  # never blocks on a planted FIFO
        with pytest.raises(OSError) as info:
            opener(str(tmp_path / "fifo.log"))
        assert info.value.errno in (errno.ENXIO, errno.EINVAL)


def test_unsafe_dir(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    assert fsafe.unsafe_dir(str(folder)) is None  # missing: the master creates it
    folder.mkdir()
    assert fsafe.unsafe_dir(str(folder)) is None
    folder.chmod(0o777)
    assert "writable by every user" in (fsafe.unsafe_dir(str(folder)) or "")
    folder.chmod(0o1777)
    assert fsafe.unsafe_dir(str(folder)) is None
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)
        assert "owned by uid 65534" in (fsafe.unsafe_dir(str(folder)) or "")


@pytest.mark.parametrize(
    ("value", "cut"),
    [
        ("echo http://example.com/#top", True),
        ("worker --queue=#jobs", True),
        ("sleep 1000 # a comment", False),
        ("'sh -c \"echo a # b\"'", False),
        ('"sleep 1 --queue=#jobs"', False),
    ],
)
def test_values_cut_by_an_unquoted_hash(tmp_path: Path, value: str, cut: bool) -> None:
    path = tmp_path / "gsuper.ini"
    path.write_text(f"[program:a]\ncommand = {value}\n")
    if cut:
        with pytest.raises(config.ConfigError, match="looks cut by a '#' comment"):
            config.load(str(path))
    else:
        config.load(str(path))
