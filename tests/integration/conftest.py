"""pytest fixtures: backends and usher-dispatch instances, always torn down."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


@pytest.fixture
def start_backend(tmp_path):
    """start_backend(name) -> harness.Backend (a backend.py process)."""
    started = []

    def start(name):
        b = harness.Backend(str(tmp_path), name)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture
def start_usher(tmp_path):
    """start_usher(routes, map_lines=None, config=None, ...) -> a running harness.Usher.

    At teardown every instance is stopped; one that died on its own (a crash)
    or printed a sanitizer report fails the test."""
    started = []

    def start(routes=None, start=True, **kw):
        d = tmp_path / ("usher%d" % len(started))
        d.mkdir()
        u = harness.Usher(str(d), routes, **kw)
        started.append(u)
        if start:
            try:
                u.start()
            except Exception:
                if u.proc is not None:
                    u.proc.stopped_by_us = True  # reported by this exception already
                raise
        return u

    yield start
    harness.close_all_connections()
    problems = []
    for u in started:
        died = u.proc is not None and not u.alive() and not u.proc.stopped_by_us
        rc = u.stop()
        out = u.output()
        tail = "\n".join(out.splitlines()[-80:])
        print("---- usher-dispatch log (%s, exit %s), last lines ----\n%s" % (u.dir, rc, tail))
        if died:
            problems.append("usher-dispatch died during the test (exit status %s)" % rc)
        for marker in SANITIZER_MARKERS:
            if marker in out:
                problems.append("usher-dispatch log contains a sanitizer report (%s)" % marker)
                break
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def alice_bob(start_backend):
    return {"alice": start_backend("alice"), "bob": start_backend("bob")}


@pytest.fixture
def usher(start_usher, alice_bob):
    """alice and bob mapped with backends; carol mapped without one."""
    return start_usher(dict(alice_bob, carol=None))
