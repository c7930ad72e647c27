"""The person's path end to end (issue 6): a real browser (headless Debian chromium driven by
playwright-core, browser.mjs) through a real SSO edge (nginx auth_request to sso.py) into
usher-dispatch, which mints each person's app session through real sudo, into per-user fake
t3 instances running as distinct OS users (stack.py).

Screenshots of every step go to $USHER_BUILD_DIR/e2e-artifacts/ (else /tmp/usher-e2e-artifacts/),
replaced on each run; their paths are printed at the end of the pytest run.

It runs in both of scripts/test's passes: it takes seconds, and under USHER_SANITIZED=1 it
puts the sanitized usher-dispatch under a real browser's and nginx's traffic (keep-alive
upstreams, a browser's WebSocket), where a sanitizer report fails the test (Usher.problems).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import stack as st  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
NODE_TIMEOUT = 180  # the whole browser walk; each step has its own 15 s budget
SUMMARY = []  # lines for the end of the run (conftest.py prints them, also under -q)


def node_binary():
    return shutil.which("node") or "/usr/bin/node"


def artifacts_dir():
    build = os.environ.get("USHER_BUILD_DIR")
    d = os.path.join(build, "e2e-artifacts") if build else "/tmp/usher-e2e-artifacts"
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def missing_prerequisites():
    out = []
    if os.geteuid() != 0:
        out.append("root (the stack creates OS users and a sudoers rule)")
    if not os.path.exists(CHROMIUM):
        out.append(CHROMIUM + " (Debian package chromium)")
    if not os.path.exists(st.NGINX):
        out.append(st.NGINX + " (Debian package nginx-light)")
    if not os.path.exists(node_binary()):
        out.append("node (Node.js 20 or later)")
    if not os.path.isdir(os.path.join(HERE, "node_modules", "playwright-core")):
        out.append("tests/e2e/node_modules/playwright-core (npm ci in tests/e2e)")
    return out


@pytest.fixture(scope="module")
def stack():
    missing = missing_prerequisites()
    if missing:
        pytest.fail("the browser test needs %s: run scripts/install-deps as root"
                    % ", ".join(missing), pytrace=False)
    s = st.Stack("usher-e2e-", say=lambda msg: print("stack: " + msg))
    s.start()
    try:
        yield s
    finally:
        problems = s.problems()
        tails = s.log_tails(40)
        s.close()
    if problems:
        pytest.fail("; ".join(problems) + "\n" + tails, pytrace=False)


def kill_strays(marker):
    """Chromium processes still holding our profile directory (node died before closing its
    browser): killed by pid, and only those."""
    killed = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline:
            try:
                os.kill(int(d), signal.SIGKILL)
                killed.append(int(d))
            except ProcessLookupError:
                pass
    return killed


def test_browser_path(stack):
    artifacts = artifacts_dir()
    profile = tempfile.mkdtemp(prefix="usher-e2e-profile-")
    people = {}
    for name, password in st.PEOPLE.items():
        people[name] = {"password": password}
        if name in st.MAPPED_PEOPLE:
            people[name].update(os_user=stack.os_user(name), uid=stack.uid(name),
                                mints_log=stack.mints_log(name),
                                server_log=stack.server_log(name))
    cfg = {"url": stack.url, "artifacts": artifacts, "profile": profile,
           "chromium": CHROMIUM, "timeout_ms": 15000, "people": people,
           "mapped": list(st.MAPPED_PEOPLE), "unmapped": st.UNMAPPED}
    cfg_file = os.path.join(artifacts, "config.json")
    with open(cfg_file, "w") as f:
        json.dump(cfg, f, indent=1)
    t0 = time.monotonic()
    proc = subprocess.Popen([node_binary(), os.path.join(HERE, "browser.mjs"), cfg_file],
                            cwd=HERE, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=NODE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += "\nFAIL: the browser walk did not finish in %d s (killed)" % NODE_TIMEOUT
    finally:
        strays = kill_strays(profile)
        shutil.rmtree(profile, ignore_errors=True)
    took = time.monotonic() - t0
    with open(os.path.join(artifacts, "browser.log"), "w") as f:
        f.write(out)
    print(out)
    SUMMARY.append("browser test: %s in %.1f s; screenshots and browser.log in %s"
                   % ("passed" if proc.returncode == 0 else "FAILED", took, artifacts))
    SUMMARY.extend("  " + line.split(" ", 1)[1] for line in out.splitlines()
                   if line.startswith(("ok   ", "FAIL ")))
    if strays:
        SUMMARY.append("  killed %d stray chromium processes" % len(strays))
    if proc.returncode != 0:
        pytest.fail("the browser walk failed (exit %s):\n%s\n%s"
                    % (proc.returncode, out, stack.log_tails(30)), pytrace=False)


def test_http_path(stack):
    """The same stack without a browser: redirect to sign in, each person's own app with one
    mint, a client's forged identity header replaced by nginx, the unmapped person's 403."""
    failures = st.smoke_check(stack, say=print, fresh=False)
    assert not failures, "\n".join(failures) + "\n" + stack.log_tails(30)
