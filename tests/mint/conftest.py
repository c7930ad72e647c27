"""pytest fixtures for the mint tests (see mint_harness.py for what they set up)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mint_harness as mh  # noqa: E402


@pytest.fixture(scope="session")
def env():
    """Users, sudoers rule, files; removed at the end of the session."""
    e = mh.TestEnv()
    try:
        yield e
    finally:
        e.close()


@pytest.fixture(scope="session")
def t3_backends(env):
    return {"alice": env.t3_backend("alice"), "bob": env.t3_backend("bob")}


@pytest.fixture
def t3(t3_backends):
    """The fake t3 of alice and bob, with faults and delays cleared after each test."""
    yield t3_backends
    for b in t3_backends.values():
        b.reset()


@pytest.fixture
def start_usher(env):
    """start_usher(routes, mint=None, config=None, ...) -> a running mh.Usher (as the
    dispatcher's user). At teardown each one is stopped; one that crashed, printed a sanitizer
    report or logged a secret value fails the test."""
    started = []

    def start(routes, start=True, **kw):
        u = env.new_usher(routes, **kw)
        started.append(u)
        if start:
            try:
                u.start()
            except Exception:
                u.stopped_by_us = True
                raise
        return u

    yield start
    problems = []
    for u in started:
        u.stop()
        tail = "\n".join(u.output().splitlines()[-60:])
        print("---- usher-dispatch log (%s), last lines ----\n%s" % (u.dir, tail))
        problems += u.problems()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def usher(start_usher, t3):
    """alice and bob mapped to their own fake t3, default mint profile through real sudo."""
    return start_usher({"alice": t3["alice"], "bob": t3["bob"]})
