"""usher-reconcile against a real systemd (PID 1 of a container), real OS
users, real instances: issue 4's "Done means", one test per point.

Every test maps only its own users, so running one alone works; the
container (and so the state file) is shared by the session."""

import json
import os
import random
import re
import signal
import socket
import subprocess
import time
import urllib.request

from conftest import CONFIG, wait_for

STATE = "/var/lib/usher/state.json"


def http_json(port, path="/"):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def users_by_name(doc):
    return {u["os_user"]: u for u in doc["users"]}


def test_path_unit_brings_a_new_line_up_as_its_uid(sandbox):
    sb = sandbox
    sb.useradd("pa1", "pa2")
    # A fresh host: usher-reconcile.service itself must create what it needs
    # under its sandboxing (ProtectSystem=full).
    sb.exec("rm", "-rf", "/etc/t3-serve", "/var/lib/usher", "/run/usher")
    sb.systemctl("start", "usher-reconcile.path")
    try:
        t0 = time.monotonic()
        sb.write_map(["person.one@example.com=pa1", "pa2=pa2"])
        # Within seconds, without anyone running reconcile: the path unit did.
        port = wait_for(lambda: sb.exists(STATE) and
                        sb.state().get("users", {}).get("pa1", {}).get("port"),
                        timeout=15, what="pa1 in the state file")
        body = wait_for(lambda: http_json(port), timeout=15, what="pa1's instance answering")
        elapsed = time.monotonic() - t0
        print("map line -> pa1 serving on %d: %.2fs" % (port, elapsed))
        assert elapsed < 10
    finally:
        sb.systemctl("stop", "usher-reconcile.path")
    uid = sb.uid("pa1")
    assert body == {"uid": uid, "user": "pa1", "port": port, "pid": body["pid"]}
    assert sb.env_port("pa1") == port
    assert sb.state()["users"]["pa1"] == {"kind": "unit", "address": "127.0.0.1", "port": port,
                                          "unit": "t3-serve@pa1.service"}
    assert sb.unit_state("t3-serve@pa1.service") == ("active", "enabled")
    # ps shows the instance under pa1's uid.
    ps = sb.exec("ps", "-o", "uid=,user=,args=", "-p", str(body["pid"])).stdout.split()
    assert ps[:2] == [str(uid), "pa1"]
    journal = sb.exec("journalctl", "-u", "usher-reconcile.service", "--no-pager").stdout
    assert "event=user_provisioned os_user=pa1" in journal

    # That instance cannot write a file another user owns; it can write its own.
    sb.exec("sh", "-c", "echo mine > /home/pa2/notes && chown pa2:pa2 /home/pa2/notes "
                        "&& chmod 644 /home/pa2/notes")
    denied = http_json(port, "/write?path=/home/pa2/notes")
    assert denied["ok"] is False, denied
    assert sb.read("/home/pa2/notes") == "mine\n"
    assert http_json(port, "/write?path=/home/pa1/notes")["ok"] is True


def test_second_run_changes_nothing(sandbox):
    sb = sandbox
    sb.useradd("sa1", "sa2")
    sb.write_map(["sa1=sa1", "sa2=sa2"])
    rc, first, err = sb.reconcile()
    assert rc == 0, err
    assert first["systemd"]["mutating_calls"] > 0
    before = {p: (os.stat(sb.path(p)).st_mtime_ns, sb.read(p))
              for p in (STATE, "/etc/t3-serve/sa1.env", "/etc/t3-serve/sa2.env")}

    rc, second, err = sb.reconcile()
    assert rc == 0, err
    assert second["systemd"] == {"daemon_reload": False, "mutating_calls": 0}
    assert [u["status"] for u in second["users"]] == ["unchanged", "unchanged"]
    assert [u["actions"] for u in second["users"]] == [[], []]
    assert second["state_file"] == {"changed": False, "written": False}
    assert second["env_files_written"] == 0
    after = {p: (os.stat(sb.path(p)).st_mtime_ns, sb.read(p)) for p in before}
    assert after == before


def test_removing_a_line_stops_the_instance_and_keeps_its_port(sandbox):
    sb = sandbox
    sb.useradd("rb1", "rb2", "rb3")
    sb.write_map(["rb1=rb1", "rb2=rb2"])
    rc, doc, err = sb.reconcile()
    assert rc == 0, err
    ports = {u["os_user"]: u["port"] for u in doc["users"]}
    wait_for(lambda: http_json(ports["rb2"]), what="rb2 up")
    env_before = (os.stat(sb.path("/etc/t3-serve/rb2.env")).st_mtime_ns,
                  sb.read("/etc/t3-serve/rb2.env"))

    sb.write_map(["rb1=rb1"])
    rc, doc, err = sb.reconcile()
    assert rc == 0, err
    [removed] = doc["removed"]
    assert removed["os_user"] == "rb2" and removed["actions"] == ["stop", "disable"]
    assert removed["status"] == "changed"
    assert sb.unit_state("t3-serve@rb2.service") == ("inactive", "disabled")
    assert http_json(ports["rb2"]) is None
    state = sb.state()
    assert "rb2" not in state["users"]
    assert state["reserved"]["rb2"]["port"] == ports["rb2"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", state["reserved"]["rb2"]["since"])
    # Files of removed users are never touched.
    assert (os.stat(sb.path("/etc/t3-serve/rb2.env")).st_mtime_ns,
            sb.read("/etc/t3-serve/rb2.env")) == env_before

    # A newcomer does not get the reserved port; a returning user gets it back.
    sb.write_map(["rb1=rb1", "rb3=rb3"])
    rc, doc, err = sb.reconcile()
    assert rc == 0, err
    assert users_by_name(doc)["rb3"]["port"] not in ports.values()
    sb.write_map(["rb1=rb1", "rb3=rb3", "rb2=rb2"])
    rc, doc, err = sb.reconcile()
    assert rc == 0, err
    assert users_by_name(doc)["rb2"]["port"] == ports["rb2"]
    assert users_by_name(doc)["rb2"]["port_source"] == "reserved"
    assert "rb2" not in sb.state().get("reserved", {})
    wait_for(lambda: http_json(ports["rb2"]), what="rb2 back up")


def test_seed_deployment_keeps_its_ports(sandbox):
    """A host provisioned by the seed's script: env files, no state file."""
    sb = sandbox
    sb.useradd("wizard", "emo", "gone", "newbie")
    # Like the seed (wizard=3773, emo=3774), inside this run's port range and
    # not in the order a fresh allocation would choose.
    wizard_port, emo_port, gone_port = sb.port_base + 150, sb.port_base + 151, sb.port_base + 152
    sb.write("/etc/t3-serve/wizard.env", "T3_PORT=%d\n" % wizard_port)
    sb.write("/etc/t3-serve/emo.env", "# written by t3-provision-users.sh\nT3_PORT=%d\n" % emo_port)
    sb.write("/etc/t3-serve/gone.env", "T3_PORT=%d\n" % gone_port)
    os.unlink(sb.path(STATE))  # first run on this host
    sb.write_map(["vbarzin=wizard", "emil.barzin=emo", "newbie=newbie"])

    rc, doc, err = sb.reconcile()
    assert rc == 0, err
    users = users_by_name(doc)
    assert (users["wizard"]["port"], users["wizard"]["port_source"]) == (wizard_port, "env_file")
    assert (users["emo"]["port"], users["emo"]["port_source"]) == (emo_port, "env_file")
    assert users["wizard"]["env_file"] == users["emo"]["env_file"] == "unchanged"
    assert users["newbie"]["port"] not in (wizard_port, emo_port, gone_port)
    # The seed's own comment line stays; the file was not rewritten.
    assert sb.read("/etc/t3-serve/emo.env") == "# written by t3-provision-users.sh\nT3_PORT=%d\n" % emo_port
    state = sb.state()
    assert state["users"]["wizard"]["port"] == wizard_port
    assert state["users"]["emo"]["port"] == emo_port
    # An env file of someone not in the map: the port is held for them.
    assert state["reserved"]["gone"]["port"] == gone_port
    for user, port in (("wizard", wizard_port), ("emo", emo_port)):
        body = wait_for(lambda: http_json(port), what="%s up" % user)
        assert body["user"] == user
    rc, doc, err = sb.reconcile()
    assert rc == 0 and doc["systemd"]["mutating_calls"] == 0, err


def test_bad_lines_provision_the_good_ones_and_exit_partial(sandbox):
    sb = sandbox
    sb.useradd("ok1", "ok2")
    sb.write_map([
        "ok1=ok1",
        "this is not a mapping",
        "ghost=nosuchuser",
        "admin=root",
        "daemonic=daemon",
        "ok1=ok2",
        "Bad Name=ok2",
        "second=ok2",
    ])
    rc, doc, err = sb.reconcile()
    assert rc == 1, err
    assert doc["exit_code"] == 1
    assert [u["os_user"] for u in doc["users"]] == ["ok1", "ok2"]
    assert all(u["status"] == "changed" for u in doc["users"])
    lines = {e["line"]: e["message"] for e in doc["map_errors"]}
    assert sorted(lines) == [2, 3, 4, 5, 6, 7]
    assert "does not exist" in lines[3]
    assert "uid 0" in lines[4]
    assert "below the minimum" in lines[5]
    assert "duplicate SSO name" in lines[6]
    assert "event=map_error" in err and "line=3" in err
    for u in doc["users"]:
        assert wait_for(lambda: http_json(u["port"]), what=u["os_user"])["user"] == u["os_user"]


def test_dry_run_json_plans_and_changes_nothing(sandbox):
    sb = sandbox
    sb.useradd("dr1", "dr2")
    sb.write_map(["dr1=dr1"])
    rc, _, err = sb.reconcile()
    assert rc == 0, err
    sb.write_map(["dr2=dr2"])
    state_before = (os.stat(sb.path(STATE)).st_mtime_ns, sb.read(STATE))

    rc, plan, err = sb.reconcile("--dry-run")
    assert rc == 0, err
    assert plan["usher_reconcile"] == 1 and plan["dry_run"] is True
    [dr2] = plan["users"]
    assert dr2["os_user"] == "dr2" and dr2["status"] == "planned"
    assert dr2["actions"] == ["write_env", "enable", "start"]
    assert dr2["port_source"] == "new" and dr2["env_file"] == "create"
    assert dr2["unit"] == "t3-serve@dr2.service" and dr2["active_state"] == "inactive"
    [dr1] = plan["removed"]
    assert dr1["os_user"] == "dr1" and dr1["actions"] == ["stop", "disable"]
    assert dr1["status"] == "planned"
    assert plan["systemd"] == {"daemon_reload": True, "mutating_calls": 0}
    assert plan["summary"]["planned"] == 1 and plan["state_file"]["changed"] is True
    # Nothing happened.
    assert not sb.exists("/etc/t3-serve/dr2.env")
    assert (os.stat(sb.path(STATE)).st_mtime_ns, sb.read(STATE)) == state_before
    assert sb.unit_state("t3-serve@dr2.service")[0] == "inactive"
    assert sb.unit_state("t3-serve@dr1.service") == ("active", "enabled")

    rc, done, err = sb.reconcile()
    assert rc == 0, err
    assert done["users"][0]["port"] == dr2["port"]
    assert [r["os_user"] for r in done["removed"]] == ["dr1"]


def test_two_runs_serialise_on_the_lock(sandbox):
    sb = sandbox
    sb.useradd("lk1", "lk2", "lk3")
    sb.write_map(["lk1=lk1"])
    held = sb.hold_lock()
    try:
        waiting = subprocess.Popen(sb.reconcile_cmd("--json"), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert waiting.poll() is None, "a run went ahead while the lock was held"
        rc, doc, err = sb.reconcile("--no-wait")
        assert rc == 2, err
        assert "another usher-reconcile run holds" in doc["errors"][0]
        assert not sb.exists("/etc/t3-serve/lk1.env")
    finally:
        held.close()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    doc = json.loads(out)
    assert doc["lock_wait_ms"] >= 900
    assert "event=lock_wait" in err

    # Two runs started together: one does the work, the other waits for it
    # and then finds nothing left to do.
    sb.write_map(["lk1=lk1", "lk2=lk2", "lk3=lk3"])
    procs = [subprocess.Popen(sb.reconcile_cmd("--json"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    calls = sorted(d["systemd"]["mutating_calls"] for d in docs)
    assert calls[0] == 0 and calls[1] > 0, calls
    assert sorted(d["env_files_written"] for d in docs) == [0, 2]


def _valid_env(text):
    return re.fullmatch(r"(?:(?:#[^\n]*|[A-Z_][A-Z0-9_]*=[^\n]*)\n)*", text) is not None and \
        re.search(r"^T3_PORT=\d+$", text, re.M) is not None


def test_sigkill_at_random_points_never_tears_a_file(sandbox):
    """Kills reconcile at random moments while it writes env files and the
    state file and drives systemd; after every kill every file parses."""
    sb = sandbox
    pool = ["kx%02d" % i for i in range(48)]
    base = sb.port_base + 100
    with open(sb.path("/etc/passwd"), "a") as pw, open(sb.path("/etc/group"), "a") as gr:
        for i, name in enumerate(pool):
            if sb.exec("id", "-u", name, check=False).returncode == 0:
                continue
            pw.write("%s:x:%d:%d::/nonexistent:/usr/sbin/nologin\n" % (name, 61000 + i, 61000 + i))
            gr.write("%s:x:%d:\n" % (name, 61000 + i))
    config = "/etc/usher/kill.conf"
    sb.write(config, "[users]\nmap_file = /etc/usher/kill-map\nstate_file = /var/lib/usher-kill/state.json\n"
             "[reconcile]\nport_range = %d-%d\nenv_dir = /etc/usher-kill\nunit_template = usher-kill@\n"
             "lock_file = /run/usher/kill.lock\n" % (base, base + 49))
    rng = random.Random(4)
    kills = 0
    durations = []
    for iteration in range(30):
        mapped = rng.sample(pool, 12)
        sb.write_map(["%s=%s" % (u, u) for u in mapped], p="/etc/usher/kill-map")
        # A hand-edited (wrong) port: reconcile must replace that file too.
        env = "/etc/usher-kill/%s.env" % mapped[0]
        if sb.exists(env):
            sb.write(env, "T3_PORT=1\n")
        t0 = time.monotonic()
        p = subprocess.Popen(sb.reconcile_cmd(config=config), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        pid = sb.reconcile_pid(p)
        delay = rng.uniform(0, 0.8)
        try:
            p.wait(timeout=delay)
            durations.append(time.monotonic() - t0)
        except subprocess.TimeoutExpired:
            try:
                os.kill(pid, signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass  # it finished just now
            p.wait()
        # Every file is whole: the old version or the new one.
        state = json.loads(sb.read("/var/lib/usher-kill/state.json")) if sb.exists(
            "/var/lib/usher-kill/state.json") else {"version": 1, "users": {}}
        assert state["version"] == 1 and isinstance(state["users"], dict)
        for name in os.listdir(sb.path("/etc/usher-kill")):
            if name.endswith(".env") and not name.startswith("."):
                text = sb.read("/etc/usher-kill/" + name)
                assert _valid_env(text), "torn env file %s: %r" % (name, text)
    print("SIGKILL loop: %d of 30 runs killed; uninterrupted runs took %s s" % (
        kills, ", ".join("%.2f" % d for d in durations[:8])))
    assert kills >= 5

    # A clean run finishes the job: everything consistent, temp files gone.
    rc, doc, err = sb.reconcile(config=config)
    assert rc == 0, err
    state = json.loads(sb.read("/var/lib/usher-kill/state.json"))
    assert sorted(state["users"]) == sorted(mapped)
    ports = [b["port"] for b in state["users"].values()] + [r["port"] for r in state.get("reserved", {}).values()]
    assert len(ports) == len(set(ports)), "a port given twice"
    for u in mapped:
        assert sb.env_port(u, env_dir="/etc/usher-kill") == state["users"][u]["port"]
        assert sb.unit_state("usher-kill@%s.service" % u) == ("active", "enabled")
    leftovers = [n for n in os.listdir(sb.path("/etc/usher-kill")) + os.listdir(sb.path("/var/lib/usher-kill"))
                 if ".tmp." in n]
    assert leftovers == []
    rc, doc, err = sb.reconcile(config=config)
    assert rc == 0 and doc["systemd"]["mutating_calls"] == 0, err


def test_busy_port_is_skipped(sandbox):
    sb = sandbox
    sb.useradd("bp1")
    sb.write_map([])
    rc, doc, err = sb.reconcile()
    assert rc == 0, err
    held = {r["port"] for r in doc["reserved"]}
    # The lowest port nobody holds: occupy it with a listener outside systemd.
    free = next(p for p in range(sb.port_base, sb.port_last) if p not in held)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", free))
    listener.listen()
    try:
        sb.write_map(["bp1=bp1"])
        rc, doc, err = sb.reconcile()
        assert rc == 0, err
        assert doc["users"][0]["port"] > free
    finally:
        listener.close()


def test_bus_address_from_the_host_and_exit_codes(sandbox, tmp_path):
    sb = sandbox
    (tmp_path / "map").write_text("")
    conf = tmp_path / "usher.conf"
    conf.write_text("[users]\nmap_file = %s\nstate_file = %s\n[reconcile]\nenv_dir = %s\n"
                    "[server]\nlisten = 127.0.0.1:0\n" % (tmp_path / "map", tmp_path / "state.json", tmp_path))
    r = subprocess.run([sb.binary, "--config", str(conf), "--dry-run", "--json",
                        "--bus-address", sb.bus], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["users"] == []
    env = dict(os.environ, USHER_SYSTEMD_BUS="unix:path=/nonexistent/bus")
    # Nothing to ask systemd (no unit user mapped or recorded): it is not even asked.
    r = subprocess.run([sb.binary, "--config", str(conf), "--dry-run", "--json"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    # A unit instance recorded in the state file must be looked at: systemd is needed.
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "users": {"ghost": {
        "kind": "unit", "address": "127.0.0.1", "port": 3999, "unit": "t3-serve@ghost.service"}}}))
    r = subprocess.run([sb.binary, "--config", str(conf), "--dry-run", "--json"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2
    assert "cannot connect" in json.loads(r.stdout)["errors"][0]
    conf.write_text("[reconcile]\nport_range = 9-3\nbogus = 1\n[nope]\nx = 1\n")
    r = subprocess.run([sb.binary, "--config", str(conf), "--check-config"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "%s:2: [reconcile] port_range: expected FIRST-LAST" % conf in r.stderr
    assert "%s:3: [reconcile] bogus: unknown key" % conf in r.stderr
    assert "%s:5: [nope] x: unknown section" % conf in r.stderr
