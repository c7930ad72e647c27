"""The command line, --check-config, start-up failures, OS user checks and
shutdown."""

import pwd
import re
import signal
import subprocess
import time

from harness import IDENTITY, dispatch_binary, wait_for


def run(*args, timeout=10):
    return subprocess.run([dispatch_binary(), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


GOOD = """\
# A complete, valid configuration.
[server]
listen = 127.0.0.1:0
admin_listen = 127.0.0.1:0
trusted_proxies = 127.0.0.1/32, ::1/128 10.0.0.0/8
identity_header = X-authentik-username
forward_user_header = X-Forwarded-User

[users]
map_file = {dir}/map
state_file = {dir}/state.json
min_uid = 1000
verify_os_users = no
reload_debounce = 250ms

[limits]
max_request_line = 8192
max_header_bytes = 32768
max_headers = 100
max_body_bytes = 0
max_chunk_line = 4096
max_connections = 1000

[timeouts]
client_header = 10s
client_body = 1m
keepalive_idle = 75s
backend_connect = 5s
backend_response = 60s
upgraded_idle = 1h
shutdown_drain = 10s

[upstream]
max_idle_per_backend = 32
idle_timeout = 60s
buffer_high_watermark = 256k

[log]
level = debug
access_log = yes

[mint]
enabled = no
"""


def test_version():
    p = run("--version")
    assert p.returncode == 0, p
    assert re.search(r"\d+\.\d+\.\d+", p.stdout + p.stderr), p


def test_help():
    p = run("--help")
    assert p.returncode == 0, p
    assert "--config" in p.stdout + p.stderr
    assert "--check-config" in p.stdout + p.stderr


def test_unknown_option_fails():
    p = run("--no-such-option")
    assert p.returncode != 0, p
    assert "no-such-option" in p.stderr, p


def test_check_config_accepts_a_good_file(tmp_path):
    cfg = write(tmp_path, "good.conf", GOOD.format(dir=tmp_path))
    p = run("--check-config", "--config", cfg)
    assert p.returncode == 0, p


def test_check_config_names_file_line_and_key(tmp_path):
    text = GOOD.format(dir=tmp_path).splitlines()
    # line numbers are 1-based: insert an unknown key after [server] and break a value
    server = text.index("[server]")
    text.insert(server + 1, "bogus_key = 1")
    unknown_line = server + 2
    limits_line = next(i for i, t in enumerate(text) if t.startswith("max_headers")) + 1
    text[limits_line - 1] = "max_headers = lots"
    timeout_line = next(i for i, t in enumerate(text) if t.startswith("client_header")) + 1
    text[timeout_line - 1] = "client_header = 10 parsecs"
    cidr_line = next(i for i, t in enumerate(text) if t.startswith("trusted_proxies")) + 1
    text[cidr_line - 1] = "trusted_proxies = 300.1.2.3/33"
    cfg = write(tmp_path, "bad.conf", "\n".join(text) + "\n")
    p = run("--check-config", "--config", cfg)
    print(p.stderr)
    assert p.returncode != 0, p
    for line, section, key in ((unknown_line, "server", "bogus_key"),
                               (limits_line, "limits", "max_headers"),
                               (timeout_line, "timeouts", "client_header"),
                               (cidr_line, "server", "trusted_proxies")):
        prefix = "%s:%d: [%s] %s:" % (cfg, line, section, key)
        assert any(l.startswith(prefix) for l in p.stderr.splitlines()), (prefix, p.stderr)


def test_check_config_does_not_start_anything(tmp_path):
    cfg = write(tmp_path, "good.conf", GOOD.format(dir=tmp_path))
    t0 = time.monotonic()
    p = run("--check-config", "--config", cfg)
    assert p.returncode == 0 and time.monotonic() - t0 < 5
    assert "event=listening" not in p.stderr


def test_bad_config_refuses_to_start(tmp_path):
    cfg = write(tmp_path, "bad.conf", "[limits]\nmax_headers = -3\n")
    p = run("--config", cfg)
    assert p.returncode != 0, p
    assert "%s:2: [limits] max_headers:" % cfg in p.stderr, p.stderr
    assert "event=ready" not in p.stderr


def test_missing_config_file_refuses_to_start(tmp_path):
    p = run("--config", str(tmp_path / "nope.conf"))
    assert p.returncode != 0, p
    assert "nope.conf" in p.stderr


def test_sigterm_exits_cleanly(start_usher, alice_bob):
    u = start_usher(alice_bob)
    assert u.get("/whoami").status == 200
    t0 = time.monotonic()
    rc = u.stop()
    assert rc == 0, u.output()
    assert time.monotonic() - t0 < 5
    assert u.records("listening")  # it was up


def test_sigterm_lets_an_inflight_request_finish(start_usher, alice_bob):
    u = start_usher(alice_bob, config={"timeouts": {"shutdown_drain": "5s"}})
    with u.connect(timeout=10) as c:
        c.request("GET", "/delay?ms=500", [(IDENTITY, "alice")])
        wait_for(lambda: alice_bob["alice"].requests(), 3, what="request at the backend")
        u.proc.signal(signal.SIGTERM)
        r = c.response()
        assert r.status == 200 and r.json()["name"] == "alice", r
    u.proc.stopped_by_us = True
    wait_for(lambda: not u.alive(), 10, what="usher-dispatch to exit after draining")
    assert u.proc.proc.returncode == 0


def regular_user():
    for p in pwd.getpwall():
        if 1000 <= p.pw_uid < 60000:
            return p.pw_name
    return None


def test_verify_os_users_refuses_root_and_unknown_accounts(start_usher, start_backend):
    a = start_backend("alice")
    routes = {"root": a, "nosuchuser1": a}
    lines = ["rooty=root", "ghost=nosuchuser1"]
    real = regular_user()
    if real:
        routes[real] = a
        lines.append("real=%s" % real)
    u = start_usher(routes, map_lines=lines, config={"users": {"verify_os_users": "yes"}})
    assert u.get("/whoami", user="rooty").status == 403
    assert u.get("/whoami", user="ghost").status == 403
    if real:
        r = u.get("/whoami", user="real")
        assert r.status == 200, r
    assert len(a.requests()) == (1 if real else 0)
