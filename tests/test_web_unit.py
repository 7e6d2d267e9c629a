"""Fast, in-process tests of the pure parts of watching: counters from events, the collector's
exposition (parsed back by prometheus_client), readiness, the http address rules."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gsuper import config
from gsuper.events import Event, EventStream
from gsuper.web.metrics import BUCKETS_S, Counters, GsuperCollector, MemoryCollector, make_registry, render
from gsuper.web.server import readiness


def worker(program, index, state="RUNNING", rss=1000, pid=100):
    return {"program": program, "index": index, "state": state, "pid": pid, "rss_bytes": rss, "last_error": None}


def parsed(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(doc, desired, counters):
    text = render(make_registry(GsuperCollector(lambda: doc, lambda: desired, counters)))
    text += render(make_registry(MemoryCollector(lambda: doc)))
    return parsed(text.decode())


def test_counters_follow_the_stream_and_the_histogram_adds_done_requests_at_their_mean():
    stream, counters = EventStream(), Counters()
    stream.subscribe(counters)
    for _ in range(3):
        stream.emit(Event("started", "a", 0, pid=1))
    stream.emit(Event("exit", "a", 0, pid=1, reason="max_request", code=0))
    stream.emit(Event("exit", "a", 0, pid=2, reason="killed", code=-9))
    stream.emit(Event("request", "a", 0, data={"done": 10, "requests": 10, "ms": 3.0}))  # 10 at 3 ms
    stream.emit(Event("request", "a", 1, data={"done": 2, "requests": 2, "ms": 700.0}))  # 2 at 0.7 s
    stream.emit(Event("request", "a", 1, data={"done": 0, "requests": 2, "ms": 1.0}))  # nothing new
    stream.emit(Event("scaled", "a", data={"before": 1, "after": 3, "direction": "up"}))
    doc = {"workers": [worker("a", 0), worker("a", 1, "BACKOFF", rss=None, pid=None)]}
    m = scrape(doc, {"a": 2, "idle": 1}, counters)
    assert m[("gsuper_worker_starts_total", (("program", "a"),))] == 3
    assert m[("gsuper_worker_starts_total", (("program", "idle"),))] == 0
    assert m[("gsuper_worker_exits_total", (("program", "a"), ("reason", "max_request")))] == 1
    assert m[("gsuper_worker_exits_total", (("program", "a"), ("reason", "killed")))] == 1
    assert m[("gsuper_requests_total", (("program", "a"),))] == 12
    hist = {k[1][0][1]: v for k, v in m.items() if k[0] == "gsuper_request_duration_seconds_bucket"}
    assert hist["0.0025"] == 0 and hist["0.005"] == 10 and hist["0.5"] == 10 and hist["1.0"] == 12 and hist["+Inf"] == 12
    assert m[("gsuper_request_duration_seconds_count", (("program", "a"),))] == 12
    assert m[("gsuper_request_duration_seconds_sum", (("program", "a"),))] == pytest.approx(10 * 0.003 + 2 * 0.7)
    assert m[("gsuper_workers", (("program", "a"), ("state", "RUNNING")))] == 1
    assert m[("gsuper_workers", (("program", "a"), ("state", "BACKOFF")))] == 1
    assert m[("gsuper_workers", (("program", "idle"), ("state", "FATAL")))] == 0
    assert m[("gsuper_workers_desired", (("program", "idle"),))] == 1
    assert m[("gsuper_worker_resident_memory_bytes", (("program", "a"), ("worker", "0")))] == 1000
    assert ("gsuper_worker_resident_memory_bytes", (("program", "a"), ("worker", "1"))) not in m
    assert m[("gsuper_scale_events_total", (("direction", "up"), ("program", "a")))] == 1
    assert ("gsuper_queue_backlog", (("program", "a"),)) not in m  # no programs list in the document
    assert len(BUCKETS_S) + 1 == len(hist)


def test_backlog_comes_from_the_programs_list_when_the_document_has_one():
    doc = {"workers": [], "programs": [{"name": "q", "backlog": 42, "desired": 5}, {"name": "r", "backlog": None}]}
    m = scrape(doc, {"q": 3, "r": 1}, Counters())
    assert m[("gsuper_queue_backlog", (("program", "q"),))] == 42
    assert ("gsuper_queue_backlog", (("program", "r"),)) not in m  # no reading: no sample
    assert m[("gsuper_workers_desired", (("program", "q"),))] == 5  # the autoscaler's count wins
    assert m[("gsuper_workers_desired", (("program", "r"),))] == 1


def test_every_state_is_exported_for_every_program():
    m = scrape({"workers": [worker("a", 0)]}, {"a": 1}, Counters())
    states = {dict(k[1])["state"] for k in m if k[0] == "gsuper_workers"}
    assert states == {"STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL"}


@pytest.mark.parametrize(
    ("states", "ready"),
    [
        (["RUNNING", "RUNNING"], True),
        (["RUNNING", "STOPPED"], True),  # stopped on purpose: not wanted
        (["RUNNING", "STOPPING"], True),
        (["RUNNING", "FATAL"], False),
        (["RUNNING", "BACKOFF"], False),
        (["STARTING"], False),
        (["EXITED"], False),
    ],
)
def test_readiness(states, ready):
    doc = {"master": {}, "workers": [worker("a", i, s) for i, s in enumerate(states)]}
    ok, down = readiness(doc, {"a"})
    assert ok is ready
    assert [d["state"] for d in down] == [s for s in states if s in ("STARTING", "BACKOFF", "FATAL", "EXITED")]


def test_readiness_skips_programs_that_are_not_autostarted_and_fails_while_stopping():
    doc = {"master": {}, "workers": [worker("manual", 0, "STOPPED"), worker("manual", 1, "FATAL")]}
    assert readiness(doc, set()) == (True, [])
    assert readiness({"master": {"stopping": True}, "workers": []}, set())[0] is False


@pytest.mark.parametrize(
    ("value", "token", "expect"),
    [
        ("127.0.0.1:9100", None, ("127.0.0.1", 9100)),
        ("localhost:9100", None, ("localhost", 9100)),
        ("[::1]:9100", None, ("::1", 9100)),
        ("127.0.0.5:80", None, ("127.0.0.5", 80)),
        ("0.0.0.0:9100", "t", ("0.0.0.0", 9100)),
        (":9100", "t", ("0.0.0.0", 9100)),
        ("10.1.2.3:9100", None, "reachable beyond this machine"),
        ("[::]:9100", None, "reachable beyond this machine"),
        ("host.example:9100", None, "reachable beyond this machine"),
        ("127.0.0.1", None, "is not HOST:PORT"),
        ("127.0.0.1:0", None, "is not from 1 to 65535"),
    ],
)
def test_http_address(value, token, expect):
    if isinstance(expect, tuple):
        assert config._parse_http("/f.ini", value, token) == expect
    else:
        with pytest.raises(config.ConfigError, match=expect):
            config._parse_http("/f.ini", value, token)


def test_hook_sections_are_validated(tmp_path):
    path = tmp_path / "gsuper.ini"
    base = "[program:a]\ncommand = sleep 1\n"
    cases = [
        ("[hook:h]\nevents = fatal, nope\ncommand = true\n", "[hook:h] events: 'nope' is not an event"),
        ("[hook:h]\ncommand = true\n", "[hook:h] events: a value is required"),
        ("[hook:h]\nevents = fatal\n", "[hook:h] command: a value is required"),
        ("[hook:h]\nevents = fatal\ncommand = true\nprograms = b\n", "[hook:h] programs: no program named 'b'"),
        ("[hook:h]\nevents = fatal\ncommand = true\ncolour = red\n", "[hook:h] colour: unknown key"),
    ]
    for text, fragment in cases:
        path.write_text(base + text)
        with pytest.raises(config.ConfigError) as info:
            config.load(str(path))
        assert fragment in str(info.value), (str(info.value), fragment)
    path.write_text(base + "[hook:h]\nevents = fatal, backoff\ncommand = ./notify.sh\nprograms = a\ntimeout = 5\n")
    hook = config.load(str(path)).hooks["h"]
    assert hook == config.HookConfig("h", ("fatal", "backoff"), "./notify.sh", ("a",), 5.0, str(tmp_path))
